"""Nothing outlives its request: a served, streamed, rejected or failed request leaves no
reference cycle behind.  A gateway raises the collector's threshold (gateway/tuning.py), so a
cycle is memory kept for thousands of requests: old code kept every request (its body
included) in one, through the exchange stored on the request and a keep-alive timer closure."""
from __future__ import annotations

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
