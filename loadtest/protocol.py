"""The OpenAI wire format as the load generator needs it: request bodies, and responses parsed
just enough to time tokens and count them.

A stream is read as raw chunks; every ``data:`` line is decoded, but only the fields that matter
are looked at (content/text, ``finish_reason``, ``usage``, ``error``).  Tokens that arrive in one
read share one timestamp: that is what the client saw.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson

# Regions, pools and attempts as the infercdn gateway reports them.
REGION_HEADER = "x-infercdn-region"
POOL_HEADER = "x-infercdn-pool"
ATTEMPTS_HEADER = "x-infercdn-attempts"

@dataclass(slots=True)
class Result:
    """The outcome of one request; times are seconds, ``scheduled``/``start``/``end`` are offsets
    from the start of the run."""

    index: int
    client: str
    scheduled: float
    start: float = 0.0
    end: float = 0.0
    ok: bool = False
    error: str | None = None
    status: int = 0
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    content_events: int = 0
    region: str | None = None
    pool: str | None = None
    attempts: int = 1


def make_body(endpoint: str, model: str, prompt: str, max_tokens: int, stream: bool,
              extra: dict | None = None) -> bytes:
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": stream}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream_options"] = {"include_usage": True}
    if extra:
        body.update(extra)
    return orjson.dumps(body)


def read_headers(result: Result, headers: "dict[str, str] | object") -> None:
    """Copy the gateway's routing headers (absent against a plain server) into ``result``."""
    get = headers.get  # type: ignore[attr-defined]
    result.region = get(REGION_HEADER)
    result.pool = get(POOL_HEADER)
    attempts = get(ATTEMPTS_HEADER)
    if attempts:
        try:
            result.attempts = max(1, int(attempts))
        except ValueError:
            pass


def _choice_text(obj: dict) -> tuple[str | None, str | None]:
    choices = obj.get("choices")
    if not choices:
        return None, None
    choice = choices[0]
    delta = choice.get("delta") or choice.get("message")
    text = delta.get("content") if delta is not None else choice.get("text")
    return text, choice.get("finish_reason")


def _apply_usage(result: Result, usage: dict | None) -> bool:
    if not usage:
        return False
    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    result.completion_tokens = int(usage.get("completion_tokens") or 0)
    return True


async def read_stream(result: Result, chunks: AsyncIterator[bytes], sent: float,
                      clock: Callable[[], float]) -> None:
    """Consume an SSE body, filling timings and tokens; set ``error`` to ``inband_error``
    (in-band error event), ``truncated`` (no ``[DONE]`` or no ``finish_reason``) or
    ``bad_response`` (undecodable event)."""
    buf = b""
    last = 0.0
    done = finished = has_usage = False
    itl = result.itl
    async for chunk in chunks:
        now = clock()
        buf = buf + chunk if buf else chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                result.error = "bad_response"
                return
            if "error" in obj and obj["error"]:
                result.error = "inband_error"
                return
            text, reason = _choice_text(obj)
            if text:
                if result.ttft is None:
                    result.ttft = now - sent
                else:
                    itl.append(now - last)
                last = now
                result.content_events += 1
            finished = finished or bool(reason)
            has_usage = _apply_usage(result, obj.get("usage")) or has_usage
    if not (done and finished):
        result.error = "truncated"
    elif not has_usage:
        result.completion_tokens = result.content_events


def read_json(result: Result, body: bytes, sent: float, now: float) -> None:
    """Parse a non-stream response; time to first token is the whole response time."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        result.error = "bad_response"
        return
    if not isinstance(obj, dict) or obj.get("error"):
        result.error = "inband_error" if isinstance(obj, dict) else "bad_response"
        return
    text, reason = _choice_text(obj)
    if text is None and not reason:
        result.error = "bad_response"
        return
    result.ttft = now - sent
    if not _apply_usage(result, obj.get("usage")):
        result.completion_tokens = 1 if text else 0
