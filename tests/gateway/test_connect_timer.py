"""Issue 10, defect 5: the connect timeout measures the connect, not the gateway's own loop.

A loop that is busy (here: blocked outright, as 200 concurrent requests starved it) past the
connect timeout must not turn a handshake the kernel completed into a connect error."""
from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest

from gateway.forward.upstream import Failed, Ready, UpstreamPool
from gateway.forward.dialer import Dialer
from tests.gateway.forward import fakes
from tests.routing.helpers import FakeClock
from routing.outcome import Outcome


@pytest.fixture
async def server():
    accepted: list[asyncio.StreamWriter] = []

    async def on_client(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    srv = await asyncio.start_server(on_client, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    for w in accepted:
        w.close()
    srv.close()
    await srv.wait_closed()


async def test_a_stalled_loop_is_not_a_connect_timeout(server: int) -> None:
    pool = UpstreamPool(connect_s=0.05)
    connecting = asyncio.ensure_future(pool.acquire(("http", "127.0.0.1", server)))
    await asyncio.sleep(0)  # the connect starts (the SYN goes out) ...
    time.sleep(0.3)  # ... and the loop is stalled six times the connect timeout (a busy gateway)
    conn, reused = await asyncio.wait_for(connecting, 5)
    assert not reused and conn.transport is not None and not conn.closed
    conn.abort()
    pool.close()


async def test_a_handshake_that_never_completes_is_still_a_connect_timeout() -> None:
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler = socket.create_connection(full.getsockname(), timeout=1)  # the one slot listen(0) has
        try:
            pool = UpstreamPool(connect_s=0.1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.acquire(("http", "127.0.0.1", full.getsockname()[1])), 5)
        finally:
            filler.close()


async def test_a_first_token_deadline_a_stalled_loop_fired_late_blames_no_endpoint(sim_factory) -> None:
    """The first-token deadline fired while the gateway's loop was blocked: the attempt failed,
    but as the gateway's own stall, which outlier detection and breakers never see."""
    sim = await sim_factory()
    client = Dialer(1.0, fakes.observations(fakes.topology(), FakeClock()), time.monotonic)
    body = orjson.dumps({"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 4, "stream": True})
    opening = asyncio.ensure_future(client.open(sim.url + "/v1/completions", body,
                                                {"Content-Type": "application/json"}, True, 0.05))
    await asyncio.sleep(0)
    time.sleep(0.3)  # the loop is blocked six times the deadline
    result = await asyncio.wait_for(opening, 5)
    if isinstance(result, Ready):
        result.close()
    await client.close()
    assert isinstance(result, Failed) and result.local_stall, result
    assert "loop ran" in result.detail


async def test_a_stalled_attempt_is_recorded_as_saying_nothing_of_the_endpoint() -> None:
    clock = FakeClock()
    topo = fakes.topology()
    obs = fakes.observations(topo, clock)
    ledger = fakes.ledger(obs, clock)
    ex = fakes.exchange()
    cand = fakes.candidates(topo)[0]
    ledger.failed(ex, cand, Failed(Outcome.TIMEOUT, "no first token within 0.4 s", local_stall=True), "m")
    assert obs.view(cand.endpoint.id).consecutive_failures == 0  # recorded as cancelled: not the endpoint's
    ledger.failed(ex, cand, Failed(Outcome.TIMEOUT, "no first token within 0.4 s"), "m")
    assert obs.view(cand.endpoint.id).consecutive_failures == 1
    assert [t.outcome for t in ex.tried] == [Outcome.TIMEOUT, Outcome.TIMEOUT]  # the log still says what happened
