"""Nothing outlives its request: a served, streamed, rejected or failed request leaves no
reference cycle behind.  A gateway raises the collector's threshold (gateway/tuning.py), so a
cycle is memory kept for thousands of requests: old code kept every request (its body
included) in one, through the exchange stored on the request and a keep-alive timer closure."""
from __future__ import annotations

import asyncio
import collections
import gc

import pytest

from gateway.forward.upstream import UpstreamConn
from tests.conftest import base_config
from tests.security.evil import evil_pools
from tests.security.helpers import CHAT, STREAM, call
from tests.security.test_upstream import SMALL, endless_event, huge_body, huge_error

GATEWAY_TYPES = ("Request", "ParsedRequest", "Exchange", "FirstToken", "StreamSession", "StreamTracker",
                 "UpstreamConn", "Ready", "EdgeHandler", "FrontProtocol", "FrontRequest", "FrontStreamResponse")


@pytest.fixture
def collector_off():
    gc.collect()
    gc.disable()
    yield
    gc.set_debug(0)
    gc.garbage.clear()
    gc.enable()


def cycles_left() -> dict[str, int]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = collections.Counter(type(o).__name__ for o in gc.garbage if type(o).__name__ in GATEWAY_TYPES)
    held = sum(len(o.buf) for o in gc.garbage if isinstance(o, UpstreamConn))
    gc.set_debug(0)
    gc.garbage.clear()
    return {**found, "upstream bytes": held} if held else dict(found)


async def test_served_streamed_and_rejected_requests_leave_no_cycle(sim_factory, gateway_factory,
                                                                     collector_off) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"keepalive_comment_s": 0.001}))
    await call(gw.url, CHAT)
    cycles_left()  # start-up's own
    for _ in range(5):
        assert (await call(gw.url, CHAT))[0] == 200
        assert (await call(gw.url, STREAM))[0] == 200
        assert (await call(gw.url, data=b"{", headers={"Content-Type": "application/json"}))[0] == 400
        assert (await call(gw.url, {**CHAT, "model": "nope"}))[0] == 404
    assert cycles_left() == {}


async def test_failed_upstream_exchanges_leave_no_cycle(gateway_factory, collector_off) -> None:
    async with evil_pools(huge_body, huge_error, endless_event) as pools:
        for pool in pools:
            data = base_config({"eu-west": [pool.url]}, upstream_limits=SMALL,
                               models={"*": {"non_stream": "passthrough"}})
            gw = await gateway_factory(data)
            for _ in range(3):
                await call(gw.url, CHAT)
                await call(gw.url, STREAM)
    assert cycles_left() == {}


@pytest.mark.parametrize("hedge", [False, True], ids=["walk", "race"])
async def test_a_client_gone_before_the_first_token_leaves_no_cycle(sim_factory, gateway_factory, collector_off,
                                                                     hedge: bool) -> None:
    """The attempt is cancelled while it waits (the walk, or the hedged race): a cancelled task
    keeps its CancelledError, whose traceback holds every frame it passed; nothing in those frames
    may hold the task (the first-token deadline's timer did) or the exception (a future it ended)."""
    import aiohttp

    from gateway.state import OBSERVATIONS

    sim = await sim_factory(ttft_ms=5000)
    models = {"*": {"hedge": {"enabled": True, "after_ms": 4000}}} if hedge else {}
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, models=models))
    obs = gw.app[OBSERVATIONS]
    cycles_left()  # start-up's own
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
                async with session.post(gw.url + "/v1/chat/completions", json=STREAM) as r:
                    await r.read()
        for _ in range(200):  # the gateway sees the client go and ends the attempt (bounded: 2 s)
            if obs.view("eu-west-0").inflight == 0:
                break
            await asyncio.sleep(0.01)
        assert obs.view("eu-west-0").inflight == 0
    assert cycles_left() == {}
