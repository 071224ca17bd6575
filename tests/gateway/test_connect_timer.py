"""Issue 10, defect 5: the connect timeout measures the connect, not the gateway's own loop.

A loop that is busy (here: blocked outright, as 200 concurrent requests starved it) past the
connect timeout must not turn a handshake the kernel completed into a connect error."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gateway.upstream import UpstreamPool


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
