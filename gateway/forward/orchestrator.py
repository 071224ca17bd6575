"""The attempt loop: walk the plan (then the model's fallbacks) until a first token, deliver
the answer, and if a stream breaks after its first byte resume it on another candidate.

This module only sequences: the race for a first token is :mod:`~gateway.forward.first_token`,
the relay and its resumes :mod:`~gateway.forward.resume_loop`, the client side a
:class:`~gateway.forward.client_stream.ClientStream`, every record :mod:`~gateway.forward.ledger`.
Never a truncated stream presented as success: a stream that cannot be completed ends with an
in-band error event and no ``[DONE]``."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace

from aiohttp import web

from gateway.access import EXCHANGE
from gateway.config import Config
from gateway.deadlines import candidate_deadlines
from gateway.errors import GatewayError
from gateway.forward.answers import context_too_long, exhausted, may_fall_back, refusal, refusal_message
from gateway.forward.assembled import AssembledAnswer, can_assemble
from gateway.forward.client_http import ClientRequest, HttpStream
from gateway.forward.client_stream import ClientStream
from gateway.forward.continuation import ModelChain, Planning, later_fallbacks
from gateway.forward.exchange import Exchange
from gateway.forward.first_token import FirstToken, Won
from gateway.forward.parts import Parts
from gateway.forward.resume import resumable
from gateway.forward.resume_loop import StreamSession
from gateway.forward.upstream import Ready, Refused
from gateway.forward.usage import find_usage
from gateway.request import ParsedRequest
from routing.budget import RetryBudget
from routing.outcome import Outcome
from routing.plan import Candidate, Plan, RequestContext

log = logging.getLogger("infercdn.proxy")


class Orchestrator:
    """Serves parsed requests.  Built once per app; holds no per-request state."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.ledger = parts.ledger

    @property
    def budget(self) -> RetryBudget:
        """The retry budget (a reload retunes it)."""
        return self.ledger.budget

    async def serve(self, request: ClientRequest, req: ParsedRequest, planner: Planning, cfg: Config,
                    ctx: RequestContext, allowed_models: frozenset[str] = frozenset()) -> web.StreamResponse:
        """The answer to ``req``.  ``allowed_models`` (the tenant's; empty: all) bounds every
        model the request may reach, fallbacks included.  Once a stream's head is out (keep-alive
        comments), any failure ends it with the in-band error event, never a second response."""
        mcfg = cfg.model_cfg(req.model)
        assembled = not req.stream and mcfg.non_stream == "stream" and req.kind in ("chat", "completions") \
            and can_assemble(req.body)
        if assembled:
            req = req.as_stream()
        now = asyncio.get_running_loop().time
        ex = Exchange(req, cfg, mcfg, now() + mcfg.total_deadline_s, assembled=assembled, now=now)
        request[EXCHANGE] = ex  # for the access log
        # the only holder of the client's request from here on
        out: ClientStream = AssembledAnswer(ex, self.ledger, cfg.upstream_limits.max_body_bytes) if assembled \
            else HttpStream(request, ex, self.ledger)
        self.ledger.request()
        try:
            response = await self._route(ex, out, planner, ctx, allowed_models)
        except GatewayError as exc:
            if not out.committed:
                raise
            return await out.fail(exc.message, exc.type, exc.code)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            if not out.committed:
                raise
            log.exception("request %s failed after its response head was sent", req.request_id)
            return await out.fail("the gateway failed to complete the request", "internal_error", None)
        if out.committed and isinstance(response, web.Response):  # a refusal after keep-alives
            return await out.fail(refusal_message(response), "invalid_request_error", "upstream_refused")
        return response

    async def _route(self, ex: Exchange, out: ClientStream, planner: Planning, ctx: RequestContext,
                     allowed_models: frozenset[str]) -> web.StreamResponse:
        req, mcfg = ex.req, ex.mcfg
        # the ids are asked for only where a resume may use them (never for echo: vLLM would drop it)
        resume = req.stream and mcfg.resume == "token_ids" and not req.body.get("return_token_ids") \
            and resumable(req.body, req.kind)
        last_refusal: tuple[Candidate, Refused] | None = None
        plan: Plan | None = None
        fallbacks = [m for m in mcfg.fallbacks if not allowed_models or m in allowed_models]
        for model in (req.model, *fallbacks):
            plan = planner.plan(ctx if model == ctx.model else replace(ctx, model=model))  # replace() is dear
            ex.deadlines = candidate_deadlines(ex.cfg, model, self.parts.obs)
            won = await self._race(ex, out, resume).run(self._candidates(ex, plan))
            if won is None:
                continue
            if isinstance(won.result, Refused):
                won = await self._context_reroute(ex, out, won, plan, resume) or won
                if isinstance(won.result, Refused):
                    last_refusal = (won.cand, won.result)
                    self.ledger.attempt(ex, won.cand, Outcome.CLIENT_ERROR, f"refused ({won.result.status})", model)
                    if not may_fall_back(won.result, mcfg.fallback_on):
                        break  # the request's fault: another model would refuse it too, or answer what it must not
                    continue
            ex.served_by, ex.served_models = won.cand, [model]
            # a stream cut later may continue on this model's other endpoints, then on the later fallbacks
            chain = ModelChain(model, plan, later_fallbacks(fallbacks, model), planner, ctx)
            return await self._deliver(ex, out, won.cand, won.result, resume, chain)
        if last_refusal is not None:
            cand, refused = last_refusal
            self.ledger.count(ex, cand.region, str(refused.status), out.committed)
            return refusal(ex, cand, refused, self.parts.rt.wall())
        raise self._exhausted(ex, out, plan)  # not held in a local: the traceback would make a cycle

    def _exhausted(self, ex: Exchange, out: ClientStream, plan: Plan | None) -> GatewayError:
        status, error = exhausted(ex, plan)
        self.ledger.count(ex, ex.tried[-1].cand.region if ex.tried else "-", status, out.committed)
        return error

    def _race(self, ex: Exchange, out: ClientStream, resume: bool) -> FirstToken:
        req = ex.req
        assert ex.deadlines is not None
        return FirstToken(self.parts, ex, lambda c: _body(req, c, resume), req.path, ex.deadlines,
                          on_idle=out.keepalive if ex.client_stream else None)

    @staticmethod
    def _candidates(ex: Exchange, plan: Plan) -> Iterator[Candidate]:
        limit = ex.cfg.retry.max_attempts
        tried = ex.endpoints_tried()
        for n, cand in enumerate(c for c in plan.candidates if c.endpoint.id not in tried):
            if n >= limit:
                return
            yield cand

    async def _context_reroute(self, ex: Exchange, out: ClientStream, won: Won, plan: Plan,
                               resume: bool) -> Won | None:
        """A pool answered "context too long": try the pools configured for longer contexts."""
        if not isinstance(won.result, Refused) or not context_too_long(won.result):
            return None
        larger = set(ex.mcfg.larger_context) - {won.cand.pool.name}
        tried = ex.endpoints_tried() | {won.cand.endpoint.id}
        cands = [c for c in plan.candidates if c.pool.name in larger and c.endpoint.id not in tried]
        if not cands:
            return None
        self.ledger.attempt(ex, won.cand, Outcome.CLIENT_ERROR, "context too long for this pool", ex.req.model)
        return await self._race(ex, out, resume).run(iter(cands))

    async def _deliver(self, ex: Exchange, out: ClientStream, cand: Candidate, ready: Ready, resume: bool,
                       chain: ModelChain) -> web.StreamResponse:
        self.ledger.first_token(ex, cand, ready)
        if not ex.req.stream:
            ready.release()
            self.ledger.record(cand, Outcome.SUCCESS, None)
            self.ledger.usage(ex, find_usage(ready.first))
            self.ledger.count(ex, cand.region, "200", out.committed)
            return web.Response(status=200, body=ready.first, headers={
                **ready.headers, **ex.headers(cand, ex.served_model), "Content-Type": "application/json"})
        # an assembled answer keeps the ids in what it collects (assemble() reads past them) and
        # always asks for usage; a relayed one strips the ids the gateway asked for
        opts = ex.req.body.get("stream_options")
        usage = ex.assembled or (isinstance(opts, dict) and bool(opts.get("include_usage")))
        session = StreamSession(self.parts, ex, chain, out, strip_ids=resume and not ex.assembled,
                                include_usage=usage)
        return await session.run(cand, ready)


def _body(req: ParsedRequest, cand: Candidate, resume: bool) -> bytes:
    if not resume:
        return req.body_for(cand.upstream_model)
    extra: dict[str, object] = {"return_token_ids": True}
    if cand.upstream_model != req.model:
        extra["model"] = cand.upstream_model
    return req.body_with(extra)
