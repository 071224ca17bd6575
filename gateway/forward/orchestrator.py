"""The attempt loop: walk the plan (then the model's fallbacks) until a first token, relay
the answer, and if a stream breaks after its first byte resume it on another candidate.

Never a truncated stream presented as success: a stream that cannot be completed ends with
an in-band error event and no ``[DONE]``."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from collections.abc import Iterator

import orjson
from aiohttp import web

from gateway.access import EXCHANGE
from gateway.forward.assembled import AssembledSession, can_assemble
from gateway.forward.first_token import FirstToken, Won
from gateway.config import Config
from gateway.forward.continuation import ModelChain, later_fallbacks
from gateway.deadlines import candidate_deadlines
from gateway.errors import GatewayError, ModelNotFound, NotFound, RateLimited, Unavailable, openai_error_bytes
from gateway.forward.exchange import Exchange
from gateway.metrics import GatewayMetrics
from gateway.forward.usage import find_usage
from gateway.request import ParsedRequest
from gateway.forward.resume import resumable
from gateway.forward.resume_loop import StreamSession
from gateway.state import Runtime
from gateway.forward.relay import ByteBudget
from gateway.forward.upstream import Ready, Refused
from gateway.forward.dialer import NOT_SERVED, Dialer, capped_retry_after
from gateway.forward.ledger import Ledger
from routing.budget import RetryBudget
from routing.observations import Observations
from routing.outcome import Outcome
from routing.plan import Candidate, Plan, RequestContext

CONTEXT_MARKERS = (b"maximum context length", b"context_length_exceeded")

CONTENT_POLICY_MARKERS = (b"content_policy",)
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})


def may_fall_back(refused: Refused, fallback_on: tuple[str, ...]) -> bool:
    """Whether a refusal may be tried on the fallback models: not one that is the request's fault
    (a content-policy refusal, a 400/413/422), unless ``models.<m>.fallback_on: [content_policy]``
    opts a content-policy refusal in.  Other 4xx (401, 403, 404: the pool's set-up) may."""
    if any(m in refused.body for m in CONTENT_POLICY_MARKERS):
        return "content_policy" in fallback_on
    return refused.status not in REQUEST_FAULT_STATUSES


log = logging.getLogger("infercdn.proxy")


class Proxy:
    """Serves parsed requests.  Built once per app; holds no per-request state."""

    def __init__(self, dialer: Dialer, ledger: Ledger, observations: Observations, metrics: GatewayMetrics,
                 runtime: Runtime) -> None:
        self.dialer = dialer
        self.ledger = ledger
        self.obs = observations
        self.metrics = metrics
        self.rt = runtime
        self.retained = ByteBudget()  # resume buffers of all streams (upstream_limits.resume_buffer_total_bytes)

    @property
    def budget(self) -> RetryBudget:
        """The retry budget (a reload retunes it)."""
        return self.ledger.budget

    async def serve(self, request: web.Request, req: ParsedRequest, planner: object, cfg: Config,
                    ctx: RequestContext, allowed_models: frozenset[str] = frozenset()) -> web.StreamResponse:
        """The answer to ``req``.  ``allowed_models`` (the tenant's; empty: all) bounds every
        model the request may reach, fallbacks included.  Once a stream's head is out (keep-alive
        comments), any failure ends it with the in-band error event, never a second response."""
        mcfg = cfg.model_cfg(req.model)
        loop = asyncio.get_running_loop()
        assembled = not req.stream and mcfg.non_stream == "stream" and req.kind in ("chat", "completions") \
            and can_assemble(req.body)
        if assembled:
            req = req.as_stream()
        ex = Exchange(request, req, cfg, mcfg, loop.time() + mcfg.total_deadline_s, assembled=assembled)
        request[EXCHANGE] = ex  # for the access log
        self.ledger.request()
        try:
            response = await self._route(ex, planner, ctx, allowed_models)
        except GatewayError as exc:
            if ex.response is None:
                raise
            return await ex.end_with_error(exc.message, exc.type, exc.code)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            if ex.response is None:
                raise
            log.exception("request %s failed after its response head was sent", req.request_id)
            return await ex.end_with_error("the gateway failed to complete the request", "internal_error", None)
        if ex.response is not None and response is not ex.response:  # a refusal after keep-alives
            return await ex.end_with_error(_refusal_message(response), "invalid_request_error", "upstream_refused")
        return response

    async def _route(self, ex: Exchange, planner: object, ctx: RequestContext,
                     allowed_models: frozenset[str]) -> web.StreamResponse:
        req, mcfg = ex.req, ex.mcfg
        # the ids are asked for only where a resume may use them (never for echo: vLLM would drop it)
        resume = req.stream and mcfg.resume == "token_ids" and not req.body.get("return_token_ids") \
            and resumable(req.body, req.kind)
        last_refusal: tuple[Candidate, Refused] | None = None
        plan: Plan | None = None
        fallbacks = [m for m in mcfg.fallbacks if not allowed_models or m in allowed_models]
        for model in (req.model, *fallbacks):
            plan = planner.plan(replace(ctx, model=model))
            ex.deadlines = candidate_deadlines(ex.cfg, model, self.obs)
            won = await FirstToken(self, ex, lambda c: self._body(req, c, resume),
                                   req.path, ex.deadlines).run(self._candidates(ex, plan, model), ex.client_stream)
            if won is None:
                continue
            if isinstance(won.result, Refused):
                won = await self._context_reroute(ex, won, plan, resume) or won
                if isinstance(won.result, Refused):
                    last_refusal = (won.cand, won.result)
                    self.ledger.attempt(ex, won.cand, Outcome.CLIENT_ERROR, f"refused ({won.result.status})", model)
                    if not may_fall_back(won.result, mcfg.fallback_on):
                        break  # the request's fault: another model would refuse it too, or answer what it must not
                    continue
            ex.served_by, ex.served_model, ex.served_models = won.cand, model, [model]
            # a stream cut later may continue on this model's other endpoints, then on the later fallbacks
            chain = ModelChain(model, plan, later_fallbacks(fallbacks, model), planner, ctx)
            return await self._deliver(ex, won.cand, won.result, resume, plan, chain)
        if last_refusal is not None:
            return self._refused(ex, *last_refusal)
        raise self._exhausted(ex, plan)

    def _candidates(self, ex: Exchange, plan: Plan, model: str) -> Iterator[Candidate]:
        limit = ex.cfg.retry.max_attempts
        tried = ex.endpoints_tried()
        for n, cand in enumerate(c for c in plan.candidates if c.endpoint.id not in tried):
            if n >= limit:
                return
            yield cand

    @staticmethod
    def _body(req: ParsedRequest, cand: Candidate, resume: bool) -> bytes:
        if not resume:
            return req.body_for(cand.upstream_model)
        extra = {"return_token_ids": True}
        if cand.upstream_model != req.model:
            extra["model"] = cand.upstream_model
        return req.body_with(extra)

    async def _context_reroute(self, ex: Exchange, won: Won, plan: Plan, resume: bool) -> Won | None:
        """A pool answered "context too long": try the pools configured for longer contexts."""
        refused = won.result
        if not isinstance(refused, Refused) or refused.status != 400 \
                or not any(m in refused.body for m in CONTEXT_MARKERS):
            return None
        larger = set(ex.mcfg.larger_context) - {won.cand.pool.name}
        tried = ex.endpoints_tried() | {won.cand.endpoint.id}
        cands = [c for c in plan.candidates if c.pool.name in larger and c.endpoint.id not in tried]
        if not cands:
            return None
        self.ledger.attempt(ex, won.cand, Outcome.CLIENT_ERROR, "context too long for this pool", ex.req.model)
        return await FirstToken(self, ex, lambda c: self._body(ex.req, c, resume), ex.req.path, ex.deadlines).run(
            iter(cands), ex.client_stream)

    async def _deliver(self, ex: Exchange, cand: Candidate, ready: Ready, resume: bool, plan: Plan,
                       chain: ModelChain | None = None) -> web.StreamResponse:
        self.ledger.first_token(ex, cand, ready)
        if not ex.req.stream:
            ready.release()
            self.ledger.record(cand, Outcome.SUCCESS, None)
            self.ledger.usage(ex, find_usage(ready.first))
            self.count(ex, cand.region, "200")
            return web.Response(status=200, body=ready.first, headers={**ready.headers, **ex.headers(cand, ex.served_model),
                                                                        "Content-Type": "application/json"})
        session = (AssembledSession if ex.assembled else StreamSession)(self, ex, plan, strip_ids=resume,
                                                                         chain=chain)
        return await session.run(cand, ready)

    def _refused(self, ex: Exchange, cand: Candidate, refused: Refused) -> web.Response:
        self.count(ex, cand.region, str(refused.status))
        headers = {**refused.headers, **ex.headers(cand), "Content-Type": "application/json"}
        wait = capped_retry_after(refused.retry_after, ex.cfg.retry.client_retry_after_max_s, self.rt.wall())
        if wait is not None:
            headers["Retry-After"] = wait
        return web.Response(status=refused.status, body=openai_error_bytes(refused.status, refused.body),
                            headers=headers)

    def _exhausted(self, ex: Exchange, plan: Plan | None) -> Exception:
        region = ex.tried[-1].cand.region if ex.tried else "-"
        ids = ex.headers(None)
        if ex.tried and all(t.outcome is Outcome.HTTP_429 for t in ex.tried):
            self.count(ex, region, "429")
            wait = min(ex.retry_after_s if ex.retry_after_s is not None else 1.0, ex.cfg.retry.client_retry_after_max_s)
            return RateLimited(f"every pool serving {ex.req.model!r} is throttling requests; retry later",
                               headers={"Retry-After": str(max(1, round(wait))), **ids})
        if ex.tried and all(t.detail.startswith(NOT_SERVED) for t in ex.tried):
            self.count(ex, region, "404")
            return NotFound(f"no pool serving model {ex.req.model!r} serves {ex.req.path}", headers=ids)
        self.count(ex, region, "503")
        if not ex.tried:
            reasons = sorted({r.reason for r in plan.rejected}) if plan else []
            if plan is not None and not plan.candidates and reasons == ["model_not_served"]:
                return ModelNotFound(f"The model '{ex.req.model}' is not served by any pool", param="model")
            return Unavailable(f"no healthy pool can serve model {ex.req.model!r} ({', '.join(reasons) or 'no candidates'})",
                               headers=ids)
        # which endpoints failed and how stays in the log and the admin API, not in the answer
        log.info("request %s: no upstream could serve it: %s", ex.req.request_id, ex.summary())
        return Unavailable(f"no upstream could serve the request after {len(ex.tried)} attempt(s)", headers=ids)

    def count(self, ex: Exchange, region: str, status: str) -> None:
        self.ledger.count(ex, region, status, ex.response is not None)



def _refusal_message(response: web.StreamResponse) -> str:
    """What an upstream's 4xx said, for the in-band error of a stream whose head is out."""
    body = response.body if isinstance(response, web.Response) else None
    try:
        message = orjson.loads(body)["error"]["message"] if isinstance(body, bytes) else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = None
    status = response.status
    return str(message)[:1000] if isinstance(message, str) else f"the upstream refused the request ({status})"
