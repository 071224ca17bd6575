"""Non-stream requests served from an upstream stream (``models.<m>.non_stream: stream``).

A pool that answers a non-stream request sends nothing until the whole generation is done, so
the gateway could not tell a hung pool from a long answer before the request's total deadline.
Asked for a stream instead, the same request gets what streams get: the first-token deadline
(a hung or slow pool is left for the next candidate), the stall watchdog, and mid-generation
resume on another pool.  The events are collected, not relayed, and assembled into the one
JSON object the client asked for: same id, model, text, finish reason and usage as the pool's
own non-stream answer.

Requests whose non-stream answer has a shape of its own (tool calls, logprobs, several
choices, echo, token ids) are relayed as before."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import Unavailable
import gateway.forward.fields as fields
from gateway.forward.exchange import Exchange
from gateway.forward.ledger import Ledger
from gateway.forward.resume import choices_of
from gateway.forward.upstream import UpstreamTooLarge
from gateway.sse import DONE_EVENT, events, parse_event
from routing.plan import Candidate

_NO_DELTA: dict[str, Any] = {}
# fields whose non-stream answer is more than text + finish reason + usage
_OWN_SHAPE = ("tools", "functions", "tool_choice", "logprobs", "top_logprobs", "prompt_logprobs", "echo",
              "best_of", "suffix", "return_token_ids", "stream_options")


def can_assemble(body: Mapping[str, Any]) -> bool:
    """Whether a non-stream request's answer can be assembled from its stream exactly: one
    choice only (``n`` and a list of prompts both make several; issue 10, defect 1)."""
    if choices_of(dict(body)) != 1:
        return False
    return not any(body.get(k) not in (None, False) for k in _OWN_SHAPE)


def assemble(raw: bytes, kind: str) -> dict[str, Any] | None:
    """The non-stream answer (``chat.completion`` or ``text_completion``) that the SSE events
    in ``raw`` add up to; None when they carry no choice.  Read in passes over the choices (a
    few dictionary reads per event; the fields that are rare, from the end or only where set)."""
    docs = _documents(raw)
    # kinds checked where they matter (gateway/forward/fields.py): a pool's junk reads as absent
    choices: list[dict[str, Any]] = [c for d in docs for c in fields.choices(d)]
    if not choices:
        return None
    head = docs[0]
    usage = fingerprint = None  # the last usage block, the last fingerprint (vLLM sends both at the end)
    for doc in docs[::-1]:  # a reversed copy: mypyc cannot compile reversed() over these lists
        if usage is None and isinstance(doc.get("usage"), dict):
            usage = doc["usage"]
        if fingerprint is None and doc.get("system_fingerprint"):
            fingerprint = doc["system_fingerprint"]
        if usage is not None and fingerprint is not None:
            break
    finish = stop = None
    for choice in choices[::-1]:
        if choice.get("finish_reason") is not None:
            finish, stop = choice["finish_reason"], choice.get("stop_reason")
            break
    role, reasoning_key, reasoning = "assistant", "reasoning_content", []
    if kind == "chat":
        deltas = [fields.delta(c) or _NO_DELTA for c in choices]
        texts = [t for d in deltas if isinstance(t := d.get("content"), str)]
        for delta in [d for d in deltas if len(d) > 1 or "content" not in d]:  # role, reasoning
            role = fields.text(delta.get("role")) or role
            for key in ("reasoning_content", "reasoning"):
                part = delta.get(key)
                if part and isinstance(part, str):
                    reasoning_key = key
                    reasoning.append(part)
    else:
        texts = [t for c in choices if isinstance(t := c.get("text"), str)]
    text = "".join(texts)
    vllm = isinstance(fingerprint, str) and fingerprint.startswith("vllm")
    if kind == "chat":
        message: dict[str, Any] = {"role": role, "content": text}
        if vllm:
            message.update(refusal=None, annotations=None, audio=None, function_call=None)
            message.setdefault("reasoning", None)
        if reasoning:
            message[reasoning_key] = "".join(reasoning)
        choice_out: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                                      "stop_reason": stop}
        obj = "chat.completion"
    else:
        choice_out = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop}
        if vllm:
            choice_out.update(prompt_logprobs=None, prompt_token_ids=None)
        obj = "text_completion"
    if vllm:
        choice_out.update(token_ids=None, routed_experts=None)
    out = {"id": head.get("id"), "object": obj, "created": head.get("created"), "model": head.get("model"),
           "choices": [choice_out], "usage": usage}
    if fingerprint is not None:
        out["system_fingerprint"] = fingerprint
    if vllm:
        _vllm_fields(out, kind)
    return out


def _documents(raw: bytes) -> list[dict[str, Any]]:
    """The JSON objects of the events in ``raw``, in order.  Events as the relay keeps them
    (``data: {...}`` only, then [DONE]) are read with one parse of them all as one array (a
    parse per event costs more than the parsing); anything else (comments, named events, an
    event holding more than one value) event by event, dropping what does not parse."""
    body = raw[:-len(DONE_EVENT)] if raw.endswith(DONE_EVENT) else raw
    if body.startswith(b"data: {") and body.endswith(b"}\n\n"):
        parts = body[6:-2].split(b"}\n\ndata: {")
        joined = b"},{".join(parts)
        # every "\n\n" of the events is one of the cuts: one value per event is then one
        # value per part (a one-byte search first: searching for two bytes costs as much as
        # the rest; split + join cost less than replace and count)
        if b"\n" not in joined or b"\n\n" not in joined:
            try:
                docs = orjson.loads(b"[" + joined + b"]")
            except orjson.JSONDecodeError:
                docs = None
            if isinstance(docs, list) and len(docs) == len(parts):
                return [d for d in docs if isinstance(d, dict)]
    return [d for d in map(parse_event, events(raw)) if d is not None]


def _vllm_fields(out: dict[str, Any], kind: str) -> None:
    """The fields vLLM's own non-stream answer has that its stream does not carry (all null
    for a request served this way: nothing that asks for them is assembled), as vLLM 0.32 sends
    them: what the client would have got from the pool directly (issue 10, field fidelity)."""
    out["service_tier"] = None
    if kind == "chat":
        out.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
    out.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
    usage = out.get("usage")
    if isinstance(usage, dict):
        out["usage"] = {**usage, "prompt_tokens_details": usage.get("prompt_tokens_details"),
                        "completion_tokens_details": usage.get("completion_tokens_details")}


def stream_error(raw: bytes) -> tuple[int, bytes] | None:
    """The pool's own error when its stream carried one in place of an answer (vLLM sends
    errors its engine finds after the head as one ``{"error": ...}`` event): the status and
    body its non-stream answer has for the same request (issue 10, defect 3)."""
    for payload in events(raw):
        doc = parse_event(payload)
        if doc is None or not isinstance(doc.get("error"), dict):
            continue
        code = doc["error"].get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        return status, orjson.dumps({"error": doc["error"]})
    return None


class AssembledAnswer:
    """A :class:`~gateway.forward.client_stream.ClientStream` that collects the events (up to
    ``upstream_limits.max_body_bytes``: an endless stream fails the attempt) and answers them
    as one JSON object, or a 503 when the generation could not be completed on any pool.
    Nothing reaches the client before the end, so it is never committed."""

    def __init__(self, ex: Exchange, ledger: Ledger, limit: int) -> None:
        self.ex = ex
        self.ledger = ledger
        self.limit = limit
        self.data = bytearray()

    @property
    def committed(self) -> bool:
        return False

    async def keepalive(self, attempts: int) -> None:
        return None  # nothing is sent before the answer is whole

    async def open(self, cand: Candidate, model: str | None, upstream_headers: dict[str, str]) -> bytes:
        return b""

    async def write(self, data: bytes, last: bool = False) -> None:
        self.push(data)

    def push(self, data: bytes, last: bool = False) -> None:
        if len(self.data) + len(data) > self.limit:
            self.data = bytearray()
            raise UpstreamTooLarge(f"an upstream answer over {self.limit} bytes")
        self.data += data

    def backlog(self) -> int:
        return 0

    def room(self) -> int:
        return self.limit - len(self.data)

    def gone(self) -> bool:
        return False

    async def give_up(self, cand: Candidate, message: str) -> web.StreamResponse:
        self.ledger.count(self.ex, cand.region, "503", committed=False)
        raise Unavailable(message.replace("the stream was cut", "the answer was cut", 1),
                          headers=self.ex.headers(cand, self.ex.served_model))

    async def fail(self, message: str, type_: str, code: str | None) -> web.StreamResponse:
        raise Unavailable(message)  # never committed: the error is the answer's own

    async def finish(self, cand: Candidate, usage: dict[str, Any] | None, status: str) -> web.StreamResponse:
        # the first attempt's events, then what a resume spliced on (or an ending written)
        ex = self.ex
        raw = bytes(self.data)
        try:
            doc = assemble(raw, ex.req.kind)
        except (TypeError, AttributeError, ValueError):  # a pool's events with fields of the wrong kinds
            return await self.give_up(cand, "the upstream answer could not be assembled")
        if doc is None:
            error = stream_error(raw)
            if error is not None:
                self.ledger.count(ex, cand.region, str(error[0]), committed=False)
                return web.Response(status=error[0], body=error[1], headers={
                    "Content-Type": "application/json", **ex.headers(cand, ex.served_model)})
            return await self.give_up(cand, "the upstream stream ended without an answer")
        try:
            body = orjson.dumps(doc)
        except TypeError:  # a pool's field nested deeper than JSON can be written again
            return await self.give_up(cand, "the upstream answer could not be assembled")
        self.ledger.usage(ex, doc["usage"] if isinstance(doc["usage"], dict) else usage)
        self.ledger.count(ex, cand.region, status, committed=False)
        # headers go out last here: x-infercdn-model names every model the answer came from
        models = ", ".join(ex.served_models) or None
        headers = {"Content-Type": "application/json", **ex.headers(cand, models)}
        return web.Response(status=200, body=body, headers=headers)
