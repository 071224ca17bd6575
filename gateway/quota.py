"""Token budgets' arithmetic and OpenAI's ``x-ratelimit-*`` headers.

A tenant's ``tokens_per_minute`` is a token bucket holding at most one minute's tokens and
refilled continuously.  At admission a request is charged a cheap estimate of its prompt
(``estimate_prompt_tokens``: UTF-8 bytes / 4 of the prompt text, plus a little per message);
when it ends, the charge is corrected by the usage the pool reported (prompt and completion
tokens), so the bucket may go below zero: a stream that exhausts the budget mid-answer
finishes, and the next request waits (429, Retry-After) until the bucket holds its estimate.

Headers, as OpenAI sends them (https://platform.openai.com/docs/guides/rate-limits): the limits,
what remains, and the time until the bucket is full again as a Go duration (``1s``, ``6m0s``,
``120ms``).  A tenant without a limit on requests (or tokens) gets no headers for it: a number
would be a limit it does not have."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.access import EXCHANGE
from gateway.forward.exchange import Exchange

BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators of a chat message


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit's state for the headers: ``remaining`` may be negative (a token debt)."""

    limit: float
    remaining: float
    per_s: float  # refill rate

    def reset_s(self) -> float:
        return max(0.0, (self.limit - self.remaining) / self.per_s)


@dataclass(frozen=True, slots=True)
class Quota:
    requests: Bucket | None = None
    tokens: Bucket | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, b in (("requests", self.requests), ("tokens", self.tokens)):
            if b is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(int(b.limit))
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(b.remaining)))
                out[f"x-ratelimit-reset-{kind}"] = go_duration(b.reset_s())
        return out


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` at millisecond precision, as OpenAI writes resets."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    return (f"{h}h{m}m" if h else f"{m}m" if m else "") + s


def _text_bytes(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return sum(_text_bytes(p.get("text")) for p in content if isinstance(p, dict))
    return 0


def estimate_prompt_tokens(kind: str, body: dict[str, Any]) -> int:
    """A cheap estimate of the prompt's tokens (at least 1), charged at admission."""
    if kind == "chat":
        messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
        n = sum(_text_bytes(m.get("content")) for m in messages) / BYTES_PER_TOKEN
        n += TOKENS_PER_MESSAGE * len(messages)
    else:
        prompt = body.get("prompt")
        items = prompt if isinstance(prompt, list) else [prompt]
        n = sum(len(p) if isinstance(p, list) else _text_bytes(p) / BYTES_PER_TOKEN for p in items)
        if items and all(isinstance(p, int) for p in items):  # one prompt as token ids
            n = len(items)
    return max(1, math.ceil(n))


def count_usage(request: web.Request, metrics: Any, tenant: str, ticket: Any) -> int:
    """Tokens the finished (admitted) request used, what its ticket's charge is corrected to;
    counted per tenant in the metrics.  Nothing served (no endpoint answered): nothing used."""
    metrics.of(metrics.tenant_requests, tenant).inc()
    ex = request.get(EXCHANGE)
    if not isinstance(ex, Exchange) or ex.served_by is None:
        return 0
    prompt, completion = used_tokens(ex.usage, ticket.estimate, ex.stream_events)
    metrics.of(metrics.tenant_tokens, tenant, "prompt").inc(prompt)
    metrics.of(metrics.tenant_tokens, tenant, "completion").inc(completion)
    return prompt + completion


def used_tokens(usage: dict[str, Any] | None, estimate: int, stream_events: int) -> tuple[int, int]:
    """(prompt, completion) tokens of a finished request: the pool's usage when it reported
    one, else the admission estimate and the completion estimated from the events streamed."""
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt = prompt if isinstance(prompt, int) and prompt >= 0 else estimate
    if not (isinstance(completion, int) and completion >= 0):
        completion = max(0, stream_events - 1)
    return prompt, completion


# request[QUOTA_HEADERS]: the x-ratelimit-* headers of this request's answer, whoever writes it
QUOTA_HEADERS: Any = web.RequestKey("quota_headers", dict) if hasattr(web, "RequestKey") else "infercdn.quota"


async def add_quota_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers join every answer (JSON, stream, error) as it starts."""
    for name, value in (request.get(QUOTA_HEADERS) or {}).items():
        response.headers.setdefault(name, value)  # a 429's own headers are the fresher
