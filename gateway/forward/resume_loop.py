"""One streamed answer after its first token: relay it to the client stream, and when the
upstream dies, stalls or ends early, continue the same generation on the next candidate (see
:mod:`gateway.forward.resume` and :mod:`gateway.forward.continuation`)."""
from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from gateway.deadlines import candidate_deadlines
from gateway.forward.client_stream import ClientGone, ClientStream
from gateway.forward.continuation import ModelChain, Target, continuation_for, with_models
from gateway.forward.exchange import Exchange
from gateway.forward.parts import Parts
from gateway.forward.relay import SpliceFeed, StreamTracker, Watchdog, pump
from gateway.forward.resume import Continuation, ResumeMismatch, StreamState, deterministic, replay, resumable
from gateway.forward.splice import Splicer
from gateway.forward.upstream import Failed, Ready, Refused, UpstreamLost, UpstreamTooLarge
from gateway.forward.usage import find_usage
from gateway.sse import DONE_EVENT, UnencodableEvent, encode_event
from routing.deadlines import Deadlines, GapMeter
from routing.outcome import Outcome
from routing.plan import Candidate


ENDED_EARLY = "the upstream stream ended before [DONE]"


class StreamSession:
    """One answer's events, relayed to ``out`` (the client's response, or an assembled answer).
    ``chain``: where a cut stream may continue (this model's other endpoints, then the fallback
    models'); ``strip_ids``: the token ids were asked for by the gateway, not the client;
    ``include_usage``: the answer ends with a usage chunk."""

    def __init__(self, parts: Parts, ex: Exchange, chain: ModelChain, out: ClientStream, strip_ids: bool,
                 include_usage: bool) -> None:
        self.parts = parts
        self.ledger = parts.ledger
        self.ex = ex
        self.chain = chain
        self.out = out
        self.strip_ids = strip_ids
        self.include_usage = include_usage
        self.keep_ids = ex.req.body.get("return_token_ids") is True
        self.mismatch = False
        self.ended_early = False  # the last pump's body ended cleanly before [DONE] (not yet recorded)

    async def run(self, cand: Candidate, ready: Ready) -> web.StreamResponse:
        try:
            return await self._run(cand, ready)
        except ClientGone:  # a write after the relay (an ending, an in-band error) met a closed client
            raise asyncio.CancelledError() from None
        finally:
            ready.close()  # no-op when the pump ended it; else (the head could not be sent) its lease ends

    async def _run(self, cand: Candidate, ready: Ready) -> web.StreamResponse:
        ex = self.ex
        notice = await self.out.open(cand, ex.served_model, ready.headers)
        lim = ex.cfg.upstream_limits
        tracker = StreamTracker(self.strip_ids, ex.mcfg.resume != "off", lim.max_event_bytes, lim.resume_buffer_bytes,
                                self.parts.retained, lim.resume_buffer_total_bytes)
        try:
            outcome, detail = await self._pump(cand, ready, tracker, notice)
            usage = find_usage(bytes(tracker.raw[-8192:]))
            if not (usage and isinstance(usage.get("completion_tokens"), int)):
                ex.stream_events = tracker.raw.count(b"data: {")  # token budgets' count (gateway.quota)
            if outcome is Outcome.SUCCESS:
                return await self.out.finish(cand, usage, "200")
            # a request that cannot be resumed is relayed as it is (the in-band error if it is cut);
            # what was retained still serves the accounting (usage, events streamed)
            resume = tracker.retain and resumable(ex.req.body, ex.req.kind)
            st = replay(bytes(tracker.raw), ex.req.kind) if resume else None
        finally:
            tracker.free()  # nothing of the stream outlives it, whatever ended it
        if not self._judge_ending(cand, outcome, st):
            self.ledger.note(ex, cand, outcome, detail, ex.served_model or ex.req.model)
        if st is not None and await self._resume(st):
            return await self.out.finish(ex.served_by or cand, st.usage, "200")
        return await self.out.give_up(cand, self._cut_message(st, detail))

    async def _pump(self, cand: Candidate, ready: Ready, feeder: StreamTracker | SpliceFeed,
                    prefix: bytes = b"", model: str | None = None) -> tuple[Outcome, str]:
        ex = self.ex
        stall_s = self._deadlines(cand, model).stall_s
        wd = Watchdog(stall_s, ex.deadline)
        meter = GapMeter()
        outcome, detail = Outcome.BAD_STREAM, ENDED_EARLY
        try:
            await pump(self.out, ready, feeder, wd, prefix, meter)
            if feeder.done:
                outcome, detail = Outcome.SUCCESS, "ok"
            elif isinstance(feeder, StreamTracker) and feeder.dropped:
                detail += f" ({feeder.dropped} malformed event(s) dropped)"
        except asyncio.CancelledError as cancelled:  # each clause its own name: one name, one type
            if not wd.owns(cancelled):
                outcome, detail = Outcome.CANCELLED, "client disconnected"
                raise
            outcome = Outcome.TIMEOUT
            detail = (f"no data for {stall_s:.3g} s (stalled)" if wd.fired == "stall"
                      else "total deadline exceeded")
        except UpstreamLost as lost:
            lost.__traceback__ = None  # its frames hold the connection
            outcome = Outcome.UPSTREAM_TOO_LARGE if isinstance(lost, UpstreamTooLarge) else Outcome.RESET
            detail = str(lost)
        except ResumeMismatch as mismatch:
            outcome, detail = Outcome.BAD_STREAM, str(mismatch)
            self.mismatch = True
        except UnencodableEvent as unencodable:
            outcome, detail = Outcome.BAD_STREAM, str(unencodable)
        except ClientGone:
            outcome, detail = Outcome.CANCELLED, "client disconnected"
            raise asyncio.CancelledError() from None  # counted by the handler
        finally:
            wd.stop()
            ready.release() if outcome is Outcome.SUCCESS else ready.close()  # the lease ends with it
            if outcome is Outcome.SUCCESS:  # a cut stream's gaps say nothing of healthy silences
                self.ledger.stream_gaps(cand, meter)
            # a body that ended cleanly before [DONE] is judged by the caller (did it finish?)
            self.ended_early = outcome is Outcome.BAD_STREAM and detail.startswith(ENDED_EARLY)
            if not self.ended_early:
                self.ledger.record(cand, outcome, ready.headers_s * 1000
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
        self.ledger.record(cand, Outcome.SUCCESS if finished else outcome)
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
            self.ledger.stale(ex, cand, result.stale, model)
            if not isinstance(result, Ready):
                detail = result.detail if isinstance(result, Failed) else f"refused the continuation ({result.status})"
                outcome = result.outcome if isinstance(result, Failed) else Outcome.CLIENT_ERROR
                self.ledger.attempt(ex, cand, outcome, detail, model)
                continue
            ex.served_by = cand
            models = with_models(self._models(), model)
            splicer = Splicer(st, cont, self.keep_ids, self.include_usage, models)
            had = len(st.text)
            outcome, detail = await self._pump(cand, result, SpliceFeed(splicer, ex.cfg.upstream_limits.max_event_bytes),
                                               model=model)
            self.ledger.resumed(cont.strategy, outcome is Outcome.SUCCESS)
            ex.resumes += 1
            if outcome is Outcome.SUCCESS or len(st.text) > had:  # this model's text reached the client
                ex.served_models = models
            if outcome is Outcome.SUCCESS:
                return True
            if not self._judge_ending(cand, outcome, st):
                self.ledger.note(ex, cand, outcome, detail, model)
            if st.finish_reason is not None:  # the continuation finished, then lost its end
                if splicer.held is not None:
                    await self.out.write(encode_event(splicer.held))
                return await self._complete_ending(st)
        return False

    def _models(self) -> list[str]:
        """Every model whose text the client has so far, the first one first."""
        ex = self.ex
        return list(ex.served_models) or [ex.req.model]

    async def _open_continuation(self, target: Target, st: StreamState, cont: Continuation,
                                 left_s: float) -> tuple[Ready | Failed | Refused, Continuation]:
        """The continuation's first token, within its deadline and ``left_s`` of the resume deadline.
        A pool that refuses it (no prefill, no token-id prompt) is asked the original request
        instead, where that can reproduce the text the client has; the refusal is an attempt."""
        ex, cand = self.ex, target.cand
        ttft = min(self._deadlines(cand, target.model).ttft_s, ex.time_left(), left_s)
        limits = ex.cfg.upstream_limits
        result = await self.parts.dialer.attempt(cand, orjson.dumps(cont.body), cont.path, ttft, True, limits)
        if isinstance(result, Refused) and cont.strategy != "regenerate" and (deterministic(ex.req.body) or not st.text):
            # this pool will not continue a generation: reproduce it from the start instead
            self.ledger.stale(ex, cand, result.stale, target.model)
            self.ledger.attempt(ex, cand, Outcome.CLIENT_ERROR, f"refused the continuation ({result.status})",
                                target.model)
            again = Continuation("regenerate", ex.req.path, {**ex.req.body, "model": cand.upstream_model,
                                                              "stream": True}, st.text)
            return await self.parts.dialer.attempt(cand, orjson.dumps(again.body), again.path, ttft, True, limits), again
        return result, cont

    def _deadlines(self, cand: Candidate, model: str | None = None) -> Deadlines:
        """The deadlines of an attempt on ``cand`` for ``model`` (by default the model being served)."""
        ex = self.ex
        served = ex.served_model or ex.req.model
        if model is not None and model != served:
            return candidate_deadlines(ex.cfg, model, self.parts.obs)(cand)
        if ex.deadlines is None:
            ex.deadlines = candidate_deadlines(ex.cfg, served, self.parts.obs)
        return ex.deadlines(cand)

    async def _complete_ending(self, st: StreamState) -> bool:
        """The generation finished but its end ([DONE], usage) was lost: write it ourselves."""
        if self.include_usage and st.usage is None and st.prompt_ids is not None and st.gen_ids is not None:
            p, c = len(st.prompt_ids), len(st.gen_ids)
            st.usage = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
            obj = "chat.completion.chunk" if st.kind == "chat" else "text_completion"
            await self.out.write(encode_event({"id": st.id, "object": obj, "created": st.created, "model": st.model,
                                            "choices": [], "usage": st.usage}))
        await self.out.write(DONE_EVENT)
        return True

    def _cut_message(self, st: StreamState | None, detail: str) -> str:
        got = f" after {st.generated} token(s)" if st is not None else ""
        if self.mismatch:
            return f"the stream was cut{got} and a regeneration on another pool did not reproduce it exactly; " \
                   "the answer is incomplete"
        # what went wrong upstream (``detail``) stays in the log and the admin API
        return f"the stream was cut{got} and could not be resumed on another pool; the answer is incomplete"
