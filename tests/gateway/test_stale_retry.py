"""Issue 9, item 5: the transparent retry of a reused connection the upstream had closed is an
attempt the client and the access log see."""
from __future__ import annotations

import asyncio

from gateway.forward.dialer import Dialer
from gateway.forward.exchange import Exchange
from gateway.forward.ledger import STALE_DETAIL
from gateway.forward.upstream import Ready
from routing.outcome import Outcome
from tests.gateway.forward import fakes
from tests.routing.helpers import FakeClock

BODY = b'{"id": "x", "object": "text_completion", "choices": []}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)


async def test_a_reused_connection_closed_upstream_is_retried_and_counted() -> None:
    connections = 0

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            await _read_request(reader)
            writer.write(ANSWER)
            await writer.drain()
            if first:  # keep-alive, then the second request on it is read and the connection dropped
                await _read_request(reader)
        finally:
            writer.close()

    srv = await asyncio.start_server(on_client, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1/completions"
    clock = FakeClock()
    obs = fakes.observations(fakes.topology(), clock)
    client = Dialer(1.0, obs, clock)
    try:
        results = []
        for _ in range(2):
            result = await asyncio.wait_for(client.open(url, b"{}", {"Content-Type": "application/json"}, False, 5), 10)
            assert isinstance(result, Ready), result
            result.release()
            results.append(result)
    finally:
        srv.close()
        await srv.wait_closed()
    assert [r.stale for r in results] == [0, 1] and connections == 2
    ex = fakes.exchange()
    cand = fakes.candidates(fakes.topology())[0]
    fakes.ledger(obs, clock).stale(ex, cand, results[1].stale, "m")
    assert [(t.outcome, t.detail) for t in ex.tried] == [(Outcome.RESET, STALE_DETAIL)]
    assert ex.attempts == 1 and ex.headers(None)["x-infercdn-attempts"] == "1"
