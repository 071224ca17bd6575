"""A tiny TCP proxy for tests: forwards bytes to an upstream server unchanged, records what the
client sent, and can cut one connection after it has relayed K server-sent events.

Events are counted by the bytes ``\\ndata: `` in the server's answer: a real newline never occurs
inside an event's JSON, and both the chunked framing (``\\r\\ndata: ``) and back-to-back events
(``\\n\\ndata: ``) put one before every ``data: ``.  The cut lands just before the (K+1)-th event,
then both sides are aborted, as when a host dies mid-stream: the client sees a broken body, the
upstream sees its client leave."""
from __future__ import annotations

import asyncio
import contextlib

EVENT = b"\ndata: "


class CutProxy:
    def __init__(self, upstream_host: str, upstream_port: int, cut_after_events: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_after = cut_after_events
        self.cuts = 0
        self.sent = bytearray()  # everything clients sent, all connections
        self.relayed = bytearray()  # everything the upstream's answers delivered to clients
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _armed(self) -> bool:
        return self.cut_after is not None and self.cuts == 0

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.transport.abort()
            self._tasks.discard(task)
            return
        up = asyncio.create_task(self._pump_up(c_reader, u_writer))
        try:
            await self._pump_down(u_reader, c_writer)
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await up
            u_writer.transport.abort()
            c_writer.transport.abort()
            self._tasks.discard(task)

    async def _pump_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.sent += data
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events, tail = 0, b""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._armed():
                    window = tail + data
                    cut = None
                    for i in _find_all(window, EVENT):
                        events += 1
                        if events == (self.cut_after or 0) + 1:
                            cut = max(0, i + 1 - len(tail))  # just before this event's "data: "
                            break
                    if cut is not None:
                        self.cuts += 1
                        self.relayed += data[:cut]
                        writer.write(data[:cut])
                        await writer.drain()
                        return
                    tail = window[-(len(EVENT) - 1):]
                self.relayed += data
                writer.write(data)
                await writer.drain()


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, i = [], data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out
