"""What the fast lane (:mod:`gateway.front`) hands the handler and writes back: the request
(the names of ``aiohttp.web.Request`` that ``gateway.handlers.generate`` and the forwarding path
read), a streamed answer written to the transport, and the answer's head."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import RequestTimeout

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Connection(Protocol):
    """The lane's side of a client connection, as a request and its answer use it."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    date: DateHeader

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class DateHeader:
    """The ``Date`` header, formatted once per second of ``wall`` (the runtime's clock)."""

    __slots__ = ("wall", "at", "value")

    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.at = -1
        self.value = ""

    def now(self) -> str:
        t = int(self.wall())
        if t != self.at:
            self.at, self.value = t, formatdate(t, usegmt=True)
        return self.value


def answer_head(status: int, reason: str | None, headers: CIMultiDict[str], extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
    lines.append(extra)
    head = "".join(lines)
    # a name or value holding a line break would split the answer: refused, as aiohttp's writer does
    if head.count("\n") != len(lines) - 1 + extra.count("\n") or head.count("\r") != head.count("\n"):
        raise ValueError("a line break in the status line or a header of an answer")
    return head.encode("utf-8", "surrogateescape")


class FrontRequest:
    """What :func:`gateway.handlers.generate` and the forwarding path read of a request
    (the same names as ``aiohttp.web.Request``'s), for a request of the fast lane."""

    __slots__ = ("app", "method", "path", "headers", "transport", "content_length", "protocol", "_state",
                 "_body", "_size", "done", "stream")

    def __init__(self, protocol: Connection, app: web.Application, path: str, headers: CIMultiDictProxy[str],
                 content_length: int) -> None:
        self.protocol = protocol
        self.app = app
        self.method = "POST"
        self.path = path
        self.headers = headers
        self.transport: asyncio.Transport | None = protocol.transport
        self.content_length = content_length
        self._state: dict[Any, Any] = {}
        self._body: list[bytes] = []
        self._size = 0
        self.done: asyncio.Future[None] = protocol.loop.create_future()  # the whole body came
        self.stream: FrontStreamResponse | None = None  # a streamed answer, once started

    # the request's own state, as aiohttp's Request is a mapping
    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __contains__(self, key: Any) -> bool:
        return key in self._state

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._state.pop(key, default)

    @property
    def remote(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if peer else None

    async def whole_body(self, timeout_s: float) -> bytes:
        """The body (its length was checked against the limit with the head), within ``timeout_s``."""
        if not self.done.done():
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self.done)
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
        return b"".join(self._body)

    async def open_stream(self, headers: CIMultiDict[str]) -> FrontStreamResponse:
        """A streamed 200 answer whose head is sent now."""
        response = self.stream = FrontStreamResponse(self, headers)
        await response.start()
        return response


class FrontStreamResponse(web.StreamResponse):
    """A streamed answer of the fast lane: chunked events written to the transport."""

    def __init__(self, request: FrontRequest, headers: CIMultiDict[str]) -> None:
        super().__init__(status=200, headers=headers)
        self.front = request
        self.head = b""  # goes out with the first bytes of the body (one write, as aiohttp does)
        self.ended = False

    async def start(self) -> None:
        await self.front.app.on_response_prepare.send(self.front, self)
        self.headers.popall("Content-Length", None)
        self.headers["Transfer-Encoding"] = "chunked"
        self.headers.setdefault("Date", self.front.protocol.date.now())
        self.head = answer_head(self.status, self.reason, self.headers, "\r\n")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        protocol = self.front.protocol
        protocol.write(self.head + b"%x\r\n%b\r\n" % (len(data), bytes(data)))
        self.head = b""
        await protocol.drain()

    async def write_eof(self, data: bytes | bytearray | memoryview = b"") -> None:
        if self.ended:
            return
        self.ended = True
        chunk = b"%x\r\n%b\r\n" % (len(data), bytes(data)) if data else b""
        self.front.protocol.write(self.head + chunk + b"0\r\n\r\n")
        self.head = b""

    def ended_inline(self) -> None:
        """The end of the body went out with the last events (``HttpStream.push``)."""
        self.ended = True
