"""One streamed answer after its first token: relay it, and when the upstream dies, stalls or
ends early, continue the same generation on the next candidate (see :mod:`gateway.forward.resume`)."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from gateway.forward.continuation import ModelChain, Target, continuation_for, with_models
from gateway.deadlines import candidate_deadlines
from gateway.errors import sse_error_event
from gateway.forward.exchange import Exchange
from gateway.quota import STREAM_EVENTS
from gateway.forward.usage import find_usage
from gateway.forward.resume import Continuation, ResumeMismatch, StreamState, deterministic, replay, resumable
from gateway.forward.splice import Splicer
from gateway.sse import DONE_EVENT, UnencodableEvent, encode_event
from gateway.forward.relay import ClientGone, SpliceFeed, StreamTracker, Watchdog, pump
from gateway.forward.upstream import Failed, Ready, Refused, UpstreamLost, UpstreamTooLarge
from routing.deadlines import Deadlines, GapMeter
from routing.outcome import Outcome
from routing.plan import Candidate, Plan


ENDED_EARLY = "the upstream stream ended before [DONE]"


class StreamSession:
    """Relays to the client's response; :class:`gateway.forward.assembled.AssembledSession` collects the
    same events for a non-stream answer instead."""

    def __init__(self, proxy: Any, ex: Exchange, plan: Plan, strip_ids: bool, chain: ModelChain | None = None) -> None:
        self.proxy = proxy
        self.ex = ex
        self.plan = plan
        # where a cut stream may continue: this model's other endpoints, then the fallback models'
        self.chain = chain or ModelChain(ex.served_model or ex.req.model, plan)
        self.strip_ids = strip_ids
        opts = ex.req.body.get("stream_options")
        self.include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        self.keep_ids = ex.req.body.get("return_token_ids") is True
        self.mismatch = False
        self.ended_early = False  # the last pump's body ended cleanly before [DONE] (not yet recorded)
        self.response: Any = None  # what the events are written to (web.StreamResponse here)
        self.transport: Any = None  # where the pump writes after the first event

    async def run(self, cand: Candidate, ready: Ready) -> web.StreamResponse:
        try:
            return await self._run(cand, ready)
        except ClientGone:  # a write after the relay (an ending, an in-band error) met a closed client
            raise asyncio.CancelledError() from None

    async def _open(self, cand: Candidate, ready: Ready) -> bytes:
        """Send the response head; what to write before the first event."""
        ex = self.ex
        early = ex.response is not None  # keep-alive comments went out before a token
        self.response = await ex.commit_head(cand, ex.served_model, ready.headers)
        self.transport = ex.request.transport
        return f": served by region={cand.region} pool={cand.pool.name}\n\n".encode() if early else b""

    async def _run(self, cand: Candidate, ready: Ready) -> web.StreamResponse:
        ex = self.ex
        notice = await self._open(cand, ready)
        lim = ex.cfg.upstream_limits
        tracker = StreamTracker(self.strip_ids, ex.mcfg.resume != "off", lim.max_event_bytes, lim.resume_buffer_bytes,
                                self.proxy.retained, lim.resume_buffer_total_bytes)
        try:
            outcome, detail = await self._pump(cand, ready, tracker, notice)
            ex.request[STREAM_EVENTS] = tracker.raw.count(b"data: {")  # for token budgets (gateway.quota)
            if outcome is Outcome.SUCCESS:
                return await self._finish(cand, find_usage(bytes(tracker.raw[-8192:])), "200")
            # a request that cannot be resumed is relayed as it is (the in-band error if it is cut);
            # what was retained still serves the accounting (usage, events streamed)
            resume = tracker.retain and resumable(ex.req.body, ex.req.kind)
            st = replay(bytes(tracker.raw), ex.req.kind) if resume else None
        finally:
            tracker.free()  # nothing of the stream outlives it, whatever ended it
        if not self._judge_ending(cand, outcome, st):
            self.proxy.ledger.note(ex, cand, outcome, detail, ex.served_model or ex.req.model)
        if st is not None and await self._resume(st):
            return await self._finish(ex.served_by or cand, st.usage, "200")
        return await self._give_up(cand, self._cut_message(st, detail))

    async def _give_up(self, cand: Candidate, message: str) -> web.StreamResponse:
        """The stream cannot be completed: an in-band error event and no [DONE]."""
        await self._write(sse_error_event(message))
        return await self._finish(cand, None, "stream_error")

    async def _finish(self, cand: Candidate, usage: dict[str, Any] | None, status: str) -> web.StreamResponse:
        self.proxy.ledger.usage(self.ex, usage)
        self.proxy.count(self.ex, cand.region, status)
        # the client may close as soon as it reads [DONE], before the chunked terminator: the
        # answer was delivered, and aiohttp meets the closed transport again quietly
        with contextlib.suppress(ConnectionResetError):
            await self.response.write_eof()
        return self.response

    async def _write(self, data: bytes) -> None:
        try:
            await self.response.write(data)
        except ConnectionResetError as exc:
            raise ClientGone() from exc

    async def _pump(self, cand: Candidate, ready: Ready, feeder: StreamTracker | SpliceFeed,
                    prefix: bytes = b"", model: str | None = None) -> tuple[Outcome, str]:
        ex = self.ex
        stall_s = self._deadlines(cand, model).stall_s
        wd = Watchdog(stall_s, ex.deadline)
        meter = GapMeter()
        outcome, detail = Outcome.BAD_STREAM, ENDED_EARLY
        try:
            await pump(self.response, self.transport, ready, feeder, wd, prefix, meter)
            if feeder.done:
                outcome, detail = Outcome.SUCCESS, "ok"
            elif isinstance(feeder, StreamTracker) and feeder.dropped:
                detail += f" ({feeder.dropped} malformed event(s) dropped)"
        except asyncio.CancelledError as exc:
            if not wd.owns(exc):
                outcome, detail = Outcome.CANCELLED, "client disconnected"
                raise
            outcome = Outcome.TIMEOUT
            detail = (f"no data for {stall_s:.3g} s (stalled)" if wd.fired == "stall"
                      else "total deadline exceeded")
        except UpstreamLost as exc:
            exc.__traceback__ = None  # its frames hold the connection
            outcome = Outcome.UPSTREAM_TOO_LARGE if isinstance(exc, UpstreamTooLarge) else Outcome.RESET
            detail = str(exc)
        except ResumeMismatch as exc:
            outcome, detail = Outcome.BAD_STREAM, str(exc)
            self.mismatch = True
        except UnencodableEvent as exc:
            outcome, detail = Outcome.BAD_STREAM, str(exc)
        except ClientGone:
            outcome, detail = Outcome.CANCELLED, "client disconnected"
            raise asyncio.CancelledError() from None  # counted by the handler
        finally:
            wd.stop()
            ready.release() if outcome is Outcome.SUCCESS else ready.close()  # the lease ends with it
            if outcome is Outcome.SUCCESS:  # a cut stream's gaps say nothing of healthy silences
                self.proxy.ledger.stream_gaps(cand, meter)
            # a body that ended cleanly before [DONE] is judged by the caller (did it finish?)
            self.ended_early = outcome is Outcome.BAD_STREAM and detail.startswith(ENDED_EARLY)
            if not self.ended_early:
                self.proxy.ledger.record(cand, outcome, ready.headers_s * 1000
                                  if ready.headers_s is not None and outcome is Outcome.SUCCESS else None)
        return outcome, detail

    def _judge_ending(self, cand: Candidate, outcome: Outcome, st: StreamState | None) -> bool:
        """Record the attempt whose body ended before [DONE]: a generation that had finished
        (finish reason seen) only lost its ending, which the gateway writes: not a failed attempt
        against the endpoint.  True when it was such a finished stream."""
        if not self.ended_early:
            return False
        self.ended_early = False
        finished = st is not None and st.finish_reason is not None
        self.proxy.ledger.record(cand, Outcome.SUCCESS if finished else outcome)
        return finished

    async def _resume(self, st: StreamState) -> bool:
        ex = self.ex
        if st.finish_reason is not None:
            return await self._complete_ending(st)
        loop = asyncio.get_running_loop()
        # resumes are capped in count and in time from the first cut, not only by the total deadline
        until = loop.time() + ex.mcfg.resume_deadline_s
        tries = 0
        while not self.mismatch and ex.time_left() > 0:
            # no retry budget here: a resume continues work the fleet already accepted (the
            # remaining tokens), it does not add load the way a retry storm would
            target = self.chain.next(ex.endpoints_tried())
            if target is None or tries >= ex.cfg.retry.max_resumes or loop.time() >= until:
                return False
            cand, model = target.cand, target.model
            cont = continuation_for(ex.req, st, target, self._models(), ex.mcfg.resume)
            if cont is None:  # not on this target (sampled text, a pool without prefill): the next one
                self.chain.skip(target)
                continue
            tries += 1
            result, cont = await self._open_continuation(target, st, cont, until - loop.time())
            self.proxy.ledger.stale(ex, cand, result.stale, model)
            if not isinstance(result, Ready):
                detail = result.detail if isinstance(result, Failed) else f"refused the continuation ({result.status})"
                outcome = result.outcome if isinstance(result, Failed) else Outcome.CLIENT_ERROR
                self.proxy.ledger.attempt(ex, cand, outcome, detail, model)
                continue
            ex.served_by = cand
            models = with_models(self._models(), model)
            splicer = Splicer(st, cont, self.keep_ids, self.include_usage, models)
            had = len(st.text)
            outcome, detail = await self._pump(cand, result, SpliceFeed(splicer, ex.cfg.upstream_limits.max_event_bytes),
                                               model=model)
            self.proxy.ledger.resumed(cont.strategy, outcome is Outcome.SUCCESS)
            ex.resumes += 1
            if outcome is Outcome.SUCCESS or len(st.text) > had:  # this model's text reached the client
                ex.served_models = models
            if outcome is Outcome.SUCCESS:
                return True
            if not self._judge_ending(cand, outcome, st):
                self.proxy.ledger.note(ex, cand, outcome, detail, model)
            if st.finish_reason is not None:  # the continuation finished, then lost its end
                if splicer.held is not None:
                    await self._write(encode_event(splicer.held))
                return await self._complete_ending(st)
        return False

    def _models(self) -> list[str]:
        """Every model whose text the client has so far, the first one first."""
        ex = self.ex
        return list(ex.served_models) or [ex.served_model or ex.req.model]

    async def _open_continuation(self, target: Target, st: StreamState, cont: Continuation,
                                 left_s: float) -> tuple[Ready | Failed | Refused, Continuation]:
        """The continuation's first token, within its deadline and ``left_s`` of the resume deadline.
        A pool that refuses it (no prefill, no token-id prompt) is asked the original request
        instead, where that can reproduce the text the client has; the refusal is an attempt."""
        ex, cand = self.ex, target.cand
        ttft = min(self._deadlines(cand, target.model).ttft_s, ex.time_left(), left_s)
        limits = ex.cfg.upstream_limits
        result = await self.proxy.dialer.attempt(cand, orjson.dumps(cont.body), cont.path, ttft, True, limits)
        if isinstance(result, Refused) and cont.strategy != "regenerate" and (deterministic(ex.req.body) or not st.text):
            # this pool will not continue a generation: reproduce it from the start instead
            self.proxy.ledger.stale(ex, cand, result.stale, target.model)
            self.proxy.ledger.attempt(ex, cand, Outcome.CLIENT_ERROR, f"refused the continuation ({result.status})",
                                      target.model)
            again = Continuation("regenerate", ex.req.path, {**ex.req.body, "model": cand.upstream_model,
                                                              "stream": True}, st.text)
            return await self.proxy.dialer.attempt(cand, orjson.dumps(again.body), again.path, ttft, True, limits), again
        return result, cont

    def _deadlines(self, cand: Candidate, model: str | None = None) -> Deadlines:
        """The deadlines of an attempt on ``cand`` for ``model`` (by default the model being served)."""
        ex = self.ex
        served = ex.served_model or ex.req.model
        if model is not None and model != served:
            return candidate_deadlines(ex.cfg, model, self.proxy.obs)(cand)
        if ex.deadlines is None:
            ex.deadlines = candidate_deadlines(ex.cfg, served, self.proxy.obs)
        return ex.deadlines(cand)

    async def _complete_ending(self, st: StreamState) -> bool:
        """The generation finished but its end ([DONE], usage) was lost: write it ourselves."""
        if self.include_usage and st.usage is None and st.prompt_ids is not None and st.gen_ids is not None:
            p, c = len(st.prompt_ids), len(st.gen_ids)
            st.usage = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
            obj = "chat.completion.chunk" if st.kind == "chat" else "text_completion"
            await self._write(encode_event({"id": st.id, "object": obj, "created": st.created, "model": st.model,
                                            "choices": [], "usage": st.usage}))
        await self._write(DONE_EVENT)
        return True

    def _cut_message(self, st: StreamState | None, detail: str) -> str:
        got = f" after {st.generated} token(s)" if st is not None else ""
        if self.mismatch:
            return f"the stream was cut{got} and a regeneration on another pool did not reproduce it exactly; " \
                   "the answer is incomplete"
        # what went wrong upstream (``detail``) stays in the log and the admin API
        return f"the stream was cut{got} and could not be resumed on another pool; the answer is incomplete"
