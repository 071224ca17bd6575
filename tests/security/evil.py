"""A pool that misbehaves on purpose: raw HTTP on 127.0.0.1 port 0, scripted per request.

GET requests (health probes, /metrics) get an empty 200; each POST runs ``script(writer)``,
which writes whatever it likes (a head of any size, an endless body, ...) and returns when
done.  Writes stop when the gateway closes the connection."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
FIRST = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"tiny-chat","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class EvilPool:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.posts = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> EvilPool:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                self.posts += 1
                await self.script(writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()


async def endless(writer: asyncio.StreamWriter, piece: bytes, framed: bool = True, max_bytes: int = 1 << 30) -> None:
    """Write ``piece`` again and again (chunk-framed or raw) until the peer leaves or
    ``max_bytes`` went out (a bound, so a test that fails cannot run forever)."""
    out = chunk(piece) if framed else piece
    sent = 0
    while sent < max_bytes and not writer.is_closing():
        writer.write(out)
        sent += len(out)
        await writer.drain()


@contextlib.asynccontextmanager
async def evil_pools(*scripts: Script) -> AsyncIterator[list[EvilPool]]:
    pools = [await EvilPool(s).start() for s in scripts]
    try:
        yield pools
    finally:
        for p in pools:
            await p.stop()
