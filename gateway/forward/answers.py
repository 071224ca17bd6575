"""The answers the forwarding path makes itself: an upstream's refusal relayed, the error when
no pool could serve, and which refusals may be tried on the fallback models."""
from __future__ import annotations

import logging

import orjson
from aiohttp import web

from gateway.errors import GatewayError, ModelNotFound, NotFound, RateLimited, Unavailable, openai_error_bytes
from gateway.forward.dialer import NOT_SERVED, capped_retry_after
from gateway.forward.exchange import Exchange
from gateway.forward.upstream import Refused
from routing.outcome import Outcome
from routing.plan import Candidate, Plan

CONTEXT_MARKERS = (b"maximum context length", b"context_length_exceeded")
CONTENT_POLICY_MARKERS = (b"content_policy",)
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})

log = logging.getLogger("infercdn.proxy")


def may_fall_back(refused: Refused, fallback_on: tuple[str, ...]) -> bool:
    """Whether a refusal may be tried on the fallback models: not one that is the request's fault
    (a content-policy refusal, a 400/413/422), unless ``models.<m>.fallback_on: [content_policy]``
    opts a content-policy refusal in.  Other 4xx (401, 403, 404: the pool's set-up) may."""
    if any(m in refused.body for m in CONTENT_POLICY_MARKERS):
        return "content_policy" in fallback_on
    return refused.status not in REQUEST_FAULT_STATUSES


def context_too_long(refused: Refused) -> bool:
    return refused.status == 400 and any(m in refused.body for m in CONTEXT_MARKERS)


def refusal(ex: Exchange, cand: Candidate, refused: Refused, now: float) -> web.Response:
    """The upstream's 4xx as the client gets it (OpenAI's error shape, Retry-After capped);
    ``now``: the wall clock."""
    headers = {**refused.headers, **ex.headers(cand), "Content-Type": "application/json"}
    wait = capped_retry_after(refused.retry_after, ex.cfg.retry.client_retry_after_max_s, now)
    if wait is not None:
        headers["Retry-After"] = wait
    return web.Response(status=refused.status, body=openai_error_bytes(refused.status, refused.body),
                        headers=headers)


def exhausted(ex: Exchange, plan: Plan | None) -> tuple[str, GatewayError]:
    """No attempt got a first token: the status it is counted as and the error to answer."""
    ids = ex.headers(None)
    if ex.tried and all(t.outcome is Outcome.HTTP_429 for t in ex.tried):
        wait = min(ex.retry_after_s if ex.retry_after_s is not None else 1.0, ex.cfg.retry.client_retry_after_max_s)
        return "429", RateLimited(f"every pool serving {ex.req.model!r} is throttling requests; retry later",
                                  headers={"Retry-After": str(max(1, round(wait))), **ids})
    if ex.tried and all(t.detail.startswith(NOT_SERVED) for t in ex.tried):
        return "404", NotFound(f"no pool serving model {ex.req.model!r} serves {ex.req.path}", headers=ids)
    if not ex.tried:
        reasons = sorted({r.reason for r in plan.rejected}) if plan else []
        if plan is not None and not plan.candidates and reasons == ["model_not_served"]:
            return "503", ModelNotFound(f"The model '{ex.req.model}' is not served by any pool", param="model")
        return "503", Unavailable(f"no healthy pool can serve model {ex.req.model!r} "
                                  f"({', '.join(reasons) or 'no candidates'})", headers=ids)
    # which endpoints failed and how stays in the log and the admin API, not in the answer
    log.info("request %s: no upstream could serve it: %s", ex.req.request_id, ex.summary())
    return "503", Unavailable(f"no upstream could serve the request after {len(ex.tried)} attempt(s)", headers=ids)


def refusal_message(response: web.StreamResponse) -> str:
    """What an upstream's 4xx said, for the in-band error of a stream whose head is out."""
    body = response.body if isinstance(response, web.Response) else None
    try:
        message = orjson.loads(body)["error"]["message"] if isinstance(body, bytes) else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = None
    status = response.status
    return str(message)[:1000] if isinstance(message, str) else f"the upstream refused the request ({status})"
