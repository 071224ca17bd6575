"""Getting a first token: walk the candidates until one answers, before anything is
committed to the client.

Connect errors, resets, timeouts (no first token within the deadline), 5xx, 429 and empty
streams move on to the next candidate, within ``retry.max_attempts`` and the retry budget,
with jittered backoff.  Optional hedging starts the next candidate when the first token is
late; the first to produce a token wins and the others are cancelled upstream.  While a
stream waits for its first token, the ``on_idle`` callback it is given (the client stream's
keep-alive comments) is called every ``gateway.keepalive_comment_s``."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from gateway.forward.exchange import Exchange
from gateway.forward.parts import Parts
from gateway.forward.upstream import Failed, Ready, Refused
from routing.deadlines import Deadlines
from routing.outcome import Outcome
from routing.plan import Candidate
from routing.retry import backoff_delay, parse_retry_after


class _Rearmed:
    """Cancels whichever timer a re-arming keep-alive callback holds now."""

    def __init__(self, owner: FirstToken) -> None:
        self.owner = owner

    def cancel(self) -> None:
        if self.owner.timer is not None:
            self.owner.timer.cancel()
            self.owner.timer = None


class _Peekable:
    """An iterator of candidates that can say whether it is exhausted and take one back."""

    def __init__(self, it: Iterator[Candidate]) -> None:
        self.it = it
        self.held: list[Candidate] = []

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> Candidate:
        return self.held.pop() if self.held else next(self.it)

    def exhausted(self) -> bool:
        if not self.held:
            try:
                self.held.append(next(self.it))
            except StopIteration:
                return True
        return False

    def push(self, cand: Candidate) -> None:
        self.held.append(cand)


@dataclass(slots=True)
class Won:
    cand: Candidate
    result: Ready | Refused


OnIdle = Callable[[int], Awaitable[None]]  # called with the attempts so far while no token has come


class FirstToken:
    """One race for a first token over ``candidates`` (an iterator the caller controls).
    ``on_idle`` (None: nothing to hold open) is awaited while the attempts wait."""

    def __init__(self, parts: Parts, ex: Exchange, body_for: Callable[[Candidate], bytes], path: str,
                 deadlines: Callable[[Candidate], Deadlines], on_idle: OnIdle | None = None) -> None:
        self.parts = parts
        self.ex = ex
        self.body_for = body_for
        self.path = path
        self.deadlines = deadlines  # the model's (gateway.deadlines.candidate_deadlines)
        self.on_idle = on_idle
        self.pending: dict[asyncio.Task[Ready | Failed | Refused], Candidate] = {}
        self.keepalive_task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def run(self, candidates: Iterator[Candidate]) -> Won | None:
        if not self.ex.mcfg.hedge.enabled:
            return await self._walk(candidates)
        return await self._race(candidates)

    async def _walk(self, candidates: Iterator[Candidate]) -> Won | None:
        """One attempt at a time, awaited in this task (no task per attempt: the common case).
        Keep-alive comments come from a timer that starts a small task only when it fires."""
        ex = self.ex
        first, wait = True, None
        peekable = _Peekable(candidates)
        again: set[str] = set()  # endpoints already given their one same-endpoint retry
        attempts = 0
        while (picked := await self._pick(peekable, first, wait=wait)) is not None:
            first = False
            attempts += 1
            cand, deadline = picked
            timer = self._arm_keepalive() if self.on_idle is not None else None
            # no `await` in a `finally` (nor in an `except`) in this package: compiled (mypyc), a
            # finally that awaits re-raises an exception the awaited call had already handled
            # (docs/design-notes.md, "The compiled core")
            error: BaseException | None = None
            try:
                result = await self.parts.dialer.attempt(cand, self.body_for(cand), self.path, deadline,
                                                         ex.req.stream, ex.cfg.upstream_limits)
            except BaseException as exc:
                error = exc
            if timer is not None:
                timer.cancel()
            if self.keepalive_task is not None:
                try:  # the head must be fully sent before anything else
                    await self.keepalive_task
                except ConnectionResetError:  # the client left: seen later
                    pass
            if error is not None:
                try:
                    raise error
                finally:
                    error = None  # no cycle through this frame's traceback (tests/security/test_no_cycles.py)
            self.parts.ledger.stale(ex, cand, result.stale, ex.req.model)
            if not isinstance(result, Failed):
                return Won(cand, result)
            self.parts.ledger.failed(ex, cand, result, ex.req.model)
            wait = self._same_endpoint_retry(cand, result, peekable, again, alone=len(again) + 1 == attempts)
        return None

    def _same_endpoint_retry(self, cand: Candidate, failed: Failed, candidates: _Peekable,
                             again: set[str], alone: bool) -> float | None:
        """When no other candidate is left: a 429 whose Retry-After is at most
        ``retry.max_wait_s`` is waited out, and a 5xx or reset on the only endpoint of its pool,
        when it was the model's only candidate (``alone``: other pools were the retry), gets one
        retry after the usual jittered backoff, both on the same endpoint, once per endpoint and
        request (never a loop).  Puts ``cand`` back; the seconds to wait instead of the backoff
        (None: the backoff)."""
        if cand.endpoint.id in again or failed.local_stall or not candidates.exhausted():
            return None
        wait = None
        if failed.outcome is Outcome.HTTP_429:
            wait = parse_retry_after(failed.retry_after, self.parts.rt.wall())
            if wait is None or wait > self.ex.cfg.retry.max_wait_s or wait >= self.ex.time_left():
                return None
        elif failed.outcome not in (Outcome.HTTP_5XX, Outcome.RESET) or len(cand.pool.endpoints) != 1 or not alone:
            return None
        again.add(cand.endpoint.id)
        candidates.push(cand)
        return wait

    def _arm_keepalive(self) -> _Rearmed:
        self.timer = asyncio.get_running_loop().call_later(self.ex.cfg.gateway.keepalive_comment_s, self._fire)
        return _Rearmed(self)

    def _fire(self) -> None:
        # a method, not a closure that re-arms itself: that closure is a reference cycle (it
        # holds its own cell), which kept every streamed request until the collector ran
        loop = asyncio.get_running_loop()
        if self.keepalive_task is None or self.keepalive_task.done():
            self.keepalive_task = loop.create_task(self._keepalive(inflight=1))
        self.timer = loop.call_later(self.ex.cfg.gateway.keepalive_comment_s, self._fire)

    async def _race(self, candidates: Iterator[Candidate]) -> Won | None:
        """Hedged: attempts as tasks, the first token wins; those still running when it ends
        (a winner, the deadline, an error, the client gone) are cancelled."""
        error: BaseException | None = None
        won = None
        try:
            won = await self._hedged(candidates)
        except BaseException as exc:  # cleaned up below, not in a finally (see _walk)
            error = exc
        await self._cancel_pending(None, "")
        if error is not None:
            try:
                raise error
            finally:
                error = None  # as in _walk
        return won

    async def _hedged(self, candidates: Iterator[Candidate]) -> Won | None:
        ex, cfg = self.ex, self.ex.mcfg
        keepalive = ex.cfg.gateway.keepalive_comment_s
        loop = asyncio.get_running_loop()
        next_keepalive = loop.time() + keepalive
        hedge_at, hedges = self._hedge_at(None), 0
        if not await self._launch(candidates, first=True):
            return None
        hedge_at = self._hedge_at(next(iter(self.pending.values())))
        while self.pending:
            timeout = max(0.0, min(next_keepalive, hedge_at, ex.deadline) - loop.time())
            done, _ = await asyncio.wait(self.pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                cand = self.pending.pop(task)
                result = task.result()
                self.parts.ledger.stale(ex, cand, result.stale, ex.req.model)
                if not isinstance(result, Failed):
                    await self._cancel_pending(Outcome.CANCELLED, "lost the hedge race")
                    return Won(cand, result)
                self.parts.ledger.failed(ex, cand, result, ex.req.model)
                if not self.pending and not await self._launch(candidates):
                    return None
                if self.pending and hedge_at == float("inf") and hedges < cfg.hedge.max_hedges:
                    hedge_at = self._hedge_at(cand)
            now = loop.time()
            if now >= ex.deadline:
                await self._cancel_pending(Outcome.TIMEOUT, "no first token before the request's total deadline")
                return None
            if self.on_idle is not None and now >= next_keepalive:
                try:
                    await self._keepalive()
                except ConnectionResetError:  # the client left while the attempts ran
                    raise asyncio.CancelledError() from None
                next_keepalive = now + keepalive
            if now >= hedge_at and hedges < cfg.hedge.max_hedges:
                hedges += 1
                hedge_at = float("inf")
                await self._launch(candidates, hedge=True)
        return None

    def _hedge_at(self, cand: Candidate | None) -> float:
        hedge = self.ex.mcfg.hedge
        if cand is None or not hedge.enabled:
            return float("inf")
        after = hedge.after_ms
        if after == "p95":
            p95 = self.parts.obs.ttft_quantile(cand.pool.name, 0.95)
            after = max(hedge.min_after_ms, p95 if p95 is not None else hedge.min_after_ms)
        return asyncio.get_running_loop().time() + float(after) / 1000

    async def _pick(self, candidates: Iterator[Candidate], first: bool, hedge: bool = False,
                    wait: float | None = None) -> tuple[Candidate, float] | None:
        """The next candidate and its first-token deadline, after backoff (or ``wait``: a
        Retry-After waited out) and the retry budget."""
        ex = self.ex
        if not first and not hedge:
            retry = ex.cfg.retry
            await asyncio.sleep(wait if wait is not None else backoff_delay(
                len(ex.tried), retry.backoff_base_ms / 1000, retry.backoff_max_ms / 1000, self.parts.rt.rng))
        for cand in candidates:
            if not first and not self.parts.ledger.spend_retry(ex, cand):
                return None
            deadline = min(self._ttft(cand), ex.time_left())
            return (cand, deadline) if deadline > 0 else None
        return None

    async def _launch(self, candidates: Iterator[Candidate], first: bool = False, hedge: bool = False) -> bool:
        picked = await self._pick(candidates, first, hedge)
        if picked is None:
            return False
        cand, deadline = picked
        task = asyncio.create_task(self.parts.dialer.attempt(cand, self.body_for(cand), self.path, deadline,
                                                             self.ex.req.stream, self.ex.cfg.upstream_limits))
        self.pending[task] = cand
        return True

    def _ttft(self, cand: Candidate) -> float:
        if not self.ex.req.stream:
            return self.ex.time_left()
        return self.deadlines(cand).ttft_s

    async def _keepalive(self, inflight: int = 0) -> None:
        assert self.on_idle is not None
        await self.on_idle(len(self.ex.tried) + len(self.pending) + inflight)

    async def _cancel_pending(self, outcome: Outcome | None, detail: str) -> None:
        """Cancel the attempts still running (closing them upstream); with an ``outcome``
        they are recorded (a lost hedge, a deadline), without one (the client left) not."""
        tasks = list(self.pending.items())
        self.pending.clear()
        for task, _ in tasks:
            task.cancel()
        for task, cand in tasks:
            try:
                result = await task
            except asyncio.CancelledError:
                pass
            else:
                if isinstance(result, Ready):  # finished as it was cancelled: drop it (its lease ends)
                    result.close()
            if outcome is not None:
                self.parts.ledger.attempt(self.ex, cand, outcome, detail, self.ex.req.model)
