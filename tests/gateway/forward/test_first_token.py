"""The race for a first token, on a scripted dialer: a missed deadline moves on to the next
candidate, keep-alives go through the callback the race is given, a hedge's winner cancels the
loser.  Deadlines are tiny and waits are events: nothing sleeps to let time pass."""
from __future__ import annotations

import asyncio
import random

from gateway.forward.first_token import FirstToken
from gateway.forward.parts import Parts
from gateway.forward.upstream import Failed, Ready
from gateway.state import Runtime
from routing.deadlines import Deadline, Deadlines
from routing.outcome import Outcome
from routing.plan import Candidate
from tests.gateway.forward import fakes
from tests.routing.helpers import FakeClock

FAST = {"retry": {"max_attempts": 4, "backoff_base_ms": 0, "backoff_max_ms": 0}}


class Endpoints:
    """Scripts per endpoint (by URL): what each answers, and whether it was cancelled."""

    def __init__(self, cands: list[Candidate]) -> None:
        self.cands = cands
        self.answers: dict[str, fakes.Script] = {}
        self.cancelled: list[str] = []
        self.deadlines: list[float] = []

    async def __call__(self, url: str) -> fakes.Answer:
        cand = next(c for c in self.cands if url.startswith(c.endpoint.url))
        try:
            return await self.answers[cand.endpoint.id](url)
        except asyncio.CancelledError:
            self.cancelled.append(cand.endpoint.id)
            raise


def race(ttft_s: float, on_idle=None, **sections) -> tuple[FirstToken, Endpoints, list[Candidate], Parts]:
    clock, topo = FakeClock(), fakes.topology()
    obs = fakes.observations(topo, clock)
    cands = fakes.candidates(topo)
    eps = Endpoints(cands)
    dialer = fakes.ScriptedDialer(obs, clock, eps)
    parts = Parts(dialer, fakes.ledger(obs, clock), obs, Runtime(clock, random.Random(0), lambda: fakes.WALL))
    ex = fakes.exchange(**{**FAST, **sections})
    deadlines = Deadlines(Deadline(ttft_s, "fixed"), Deadline(5.0, "fixed"))
    return FirstToken(parts, ex, lambda c: b"{}", "/v1/chat/completions", lambda c: deadlines, on_idle), eps, cands, parts


async def answer(url: str) -> Ready:
    return fakes.ready()


async def test_a_missed_first_token_deadline_moves_on_to_the_next_candidate() -> None:
    never = asyncio.Event()
    first, eps, cands, parts = race(0.01)

    async def silent(url: str) -> Ready:
        await never.wait()
        raise AssertionError("not reached")

    eps.answers = {cands[0].endpoint.id: silent, cands[1].endpoint.id: answer}
    original = parts.dialer.open

    async def open_within(url, body, headers, stream, first_token_s, limits=fakes.DEFAULT_LIMITS):
        eps.deadlines.append(first_token_s)
        try:
            return await asyncio.wait_for(original(url, body, headers, stream, first_token_s, limits), first_token_s)
        except TimeoutError:
            return Failed(Outcome.TIMEOUT, "no first token")

    parts.dialer.open = open_within  # type: ignore[method-assign]
    won = await asyncio.wait_for(first.run(iter(cands)), 5)
    assert won is not None and won.cand == cands[1]
    assert eps.deadlines == [0.01, 0.01]  # each attempt was given the candidate's deadline
    assert [(t.cand, t.outcome) for t in first.ex.tried] == [(cands[0], Outcome.TIMEOUT)]
    assert fakes.inflight(parts.obs, cands[0].endpoint.id) == 0
    assert fakes.inflight(parts.obs, cands[1].endpoint.id) == 1  # the winner's, until its answer ends
    won.result.close()
    assert fakes.inflight(parts.obs, cands[1].endpoint.id) == 0


async def test_keepalives_go_through_the_callback_while_the_first_token_is_awaited() -> None:
    calls: list[int] = []
    token = asyncio.Event()

    async def on_idle(attempts: int) -> None:
        calls.append(attempts)
        if len(calls) == 3:
            token.set()  # the upstream answers once the client has had three keep-alives

    first, eps, cands, parts = race(5.0, on_idle, gateway={"keepalive_comment_s": 0.001})

    async def slow(url: str) -> Ready:
        await token.wait()
        return fakes.ready()

    eps.answers = {cands[0].endpoint.id: slow}
    won = await asyncio.wait_for(first.run(iter(cands[:1])), 5)
    assert won is not None and won.cand == cands[0]
    assert calls[:3] == [1, 1, 1]  # one attempt in flight each time
    won.result.close()


async def test_no_callback_no_keepalives() -> None:
    first, eps, cands, _ = race(5.0, None, gateway={"keepalive_comment_s": 0.001})
    eps.answers = {cands[0].endpoint.id: answer}
    won = await asyncio.wait_for(first.run(iter(cands[:1])), 5)
    assert won is not None and first.keepalive_task is None and first.timer is None
    won.result.close()


async def test_the_hedge_winner_cancels_the_loser() -> None:
    never = asyncio.Event()
    hedge = {"models": {"*": {"ttft_deadline_s": 5, "stall_timeout_s": 5, "total_deadline_s": 30,
                              "hedge": {"enabled": True, "after_ms": 1}}}}
    first, eps, cands, parts = race(5.0, None, **hedge)

    async def silent(url: str) -> Ready:
        await never.wait()
        raise AssertionError("not reached")

    eps.answers = {cands[0].endpoint.id: silent, cands[1].endpoint.id: answer}
    won = await asyncio.wait_for(first.run(iter(cands)), 5)
    assert won is not None and won.cand == cands[1]
    assert eps.cancelled == [cands[0].endpoint.id]
    assert [(t.cand, t.outcome, t.detail) for t in first.ex.tried] == [
        (cands[0], Outcome.CANCELLED, "lost the hedge race")]
    assert fakes.inflight(parts.obs, cands[0].endpoint.id) == 0
    won.result.close()
    assert fakes.inflight(parts.obs, cands[1].endpoint.id) == 0
