"""The dialer's lease: an endpoint's in-flight count is taken once per attempt and given back
once, whichever way the attempt ends (an answer ends it when the answer ends)."""
from __future__ import annotations

import asyncio

import pytest

from gateway.forward.dialer import NOT_SERVED, Lease
from gateway.forward.upstream import Failed, Ready, Refused
from routing.outcome import Outcome
from tests.gateway.forward import fakes
from tests.routing.helpers import FakeClock

LIMITS = fakes.DEFAULT_LIMITS


def setup(script: fakes.Script) -> tuple[fakes.ScriptedDialer, list, object]:
    clock = FakeClock()
    topo = fakes.topology()
    obs = fakes.observations(topo, clock)
    return fakes.ScriptedDialer(obs, clock, script), fakes.candidates(topo), obs


async def test_an_answer_holds_the_lease_until_it_ends() -> None:
    answer = fakes.ready()
    dialer, cands, obs = setup(lambda url: _now(answer))
    result = await dialer.attempt(cands[0], b"{}", "/v1/chat/completions", 1.0, True, LIMITS)
    assert result is answer and result.endpoint_id == cands[0].endpoint.id
    assert fakes.inflight(obs, cands[0].endpoint.id) == 1  # the relay still holds it
    result.release()
    result.close()  # a second ending does nothing: not a second release, not an abort
    assert fakes.inflight(obs, cands[0].endpoint.id) == 0
    assert fakes.fate(answer) == (1, 0)


@pytest.mark.parametrize("answer", [Failed(Outcome.HTTP_5XX, "upstream returned 502", 502),
                                    Refused(400, b'{"error": {"message": "no"}}')])
async def test_a_failure_or_refusal_gives_the_lease_back(answer: Failed | Refused) -> None:
    dialer, cands, obs = setup(lambda url: _now(answer))
    assert await dialer.attempt(cands[0], b"{}", "/v1/completions", 1.0, False, LIMITS) is answer
    assert fakes.inflight(obs, cands[0].endpoint.id) == 0


async def test_a_404_for_a_path_the_pool_lacks_is_a_failure_and_gives_the_lease_back() -> None:
    dialer, cands, obs = setup(lambda url: _now(Refused(404, b'{"detail": "Not Found"}')))
    result = await dialer.attempt(cands[0], b"{}", "/v1/embeddings", 1.0, False, LIMITS)
    assert isinstance(result, Failed) and result.detail.startswith(NOT_SERVED)
    assert fakes.inflight(obs, cands[0].endpoint.id) == 0


async def test_cancellation_while_waiting_gives_the_lease_back() -> None:
    started, never = asyncio.Event(), asyncio.Event()

    async def hang(url: str) -> Ready:
        started.set()
        await never.wait()
        raise AssertionError("not reached")

    dialer, cands, obs = setup(hang)
    task = asyncio.ensure_future(dialer.attempt(cands[0], b"{}", "/v1/completions", 1.0, True, LIMITS))
    await asyncio.wait_for(started.wait(), 5)
    assert fakes.inflight(obs, cands[0].endpoint.id) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fakes.inflight(obs, cands[0].endpoint.id) == 0


async def test_an_exception_gives_the_lease_back_and_propagates() -> None:
    async def broken(url: str) -> Ready:
        raise RuntimeError("bug")

    dialer, cands, obs = setup(broken)
    with pytest.raises(RuntimeError):
        await dialer.attempt(cands[0], b"{}", "/v1/completions", 1.0, True, LIMITS)
    assert fakes.inflight(obs, cands[0].endpoint.id) == 0


async def test_a_lease_ends_once_however_often_it_is_ended() -> None:
    clock = FakeClock()
    topo = fakes.topology()
    obs = fakes.observations(topo, clock)
    eid = topo.pools[0].endpoints[0].id
    other = await Lease(obs, eid).__aenter__()
    lease = await Lease(obs, eid).__aenter__()
    lease.end()
    lease.end()
    assert fakes.inflight(obs, eid) == 1  # the other attempt's count is untouched
    other.end()
    assert fakes.inflight(obs, eid) == 0


async def _now(answer: fakes.Answer) -> fakes.Answer:
    return answer


async def test_the_first_token_deadline_is_a_timeout_and_a_clients_cancel_is_not_swallowed() -> None:
    from gateway.forward.dialer import _Deadline

    loop = asyncio.get_running_loop()
    # the deadline fires: its cancellation becomes a timeout, and the task is not left cancelling
    deadline = _Deadline(loop, loop.time() + 0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(1)
    assert deadline.stop() is True and asyncio.current_task().cancelling() == 0
    assert deadline.stop() is False  # once

    # stopped in time: nothing fires later
    deadline = _Deadline(loop, loop.time() + 0.01)
    assert deadline.stop() is False
    await asyncio.sleep(0.03)
    assert asyncio.current_task().cancelling() == 0

    # the client left as the deadline fired (both in one turn of the loop): the client's
    # cancellation stands
    async def attempt() -> str:
        when = loop.time() + 0.01
        deadline = _Deadline(loop, when)
        loop.call_at(when, asyncio.current_task().cancel)
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            return "timeout" if deadline.stop() else "cancelled"
        return "ok"

    assert await asyncio.create_task(attempt()) == "cancelled"
