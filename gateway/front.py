"""The client side's fast lane: the two generation endpoints served by a raw asyncio protocol
parsed with httptools (as the upstream side is), everything else by aiohttp, on the same
connection.

Each connection starts with a :class:`FrontProtocol`.  A request it serves is a ``POST`` of
``/v1/chat/completions`` or ``/v1/completions`` over HTTP/1.1 with a ``Content-Length`` body
within ``gateway.max_body_bytes`` and no ``Expect``/``Upgrade``/``Transfer-Encoding``; the same
handler as aiohttp's route runs it (:func:`gateway.handlers.generate`) with a
:class:`FrontRequest`, and its answer is written to the transport directly.  Any other request
(another path or method, chunked or oversized uploads, malformed HTTP, ...) hands the
connection over to aiohttp's :class:`~gateway.edge.EdgeHandler` with the bytes of that request,
and aiohttp serves it and the rest of the connection as before: what aiohttp answers is
unchanged, and so is everything the edge bounds (docs/security.md).

What this lane keeps of aiohttp's behaviour: the connection cap and the head timeout of
:mod:`gateway.edge`, idle kept-alive connections closed after ``KEEPALIVE_S``, the handler
cancelled when the client's connection closes, ``on_response_prepare`` signals (Server,
x-ratelimit-*, the worker's tag) on every answer, a ``Date`` header, graceful shutdown (the
server's ``pre_shutdown``/``shutdown`` reach these connections: idle ones close, a request in
flight gets the drain timeout), pipelined requests answered in order, and a 500 in OpenAI's
format, with the traceback in the log, for a handler that raised.

Measured (docs/bench.md): aiohttp's request and response machinery cost about a quarter of the
gateway's CPU on a passthrough non-stream request; a bare aiohttp handler costs 0.025 ms per
request here, a bare httptools protocol 0.008 ms."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httptools
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import error_body
from gateway.front_answer import FrontRequest, answer_head

if TYPE_CHECKING:
    from gateway.edge import EdgeServer

log = logging.getLogger("infercdn.front")

HOT: dict[bytes, tuple[str, str]] = {b"/v1/chat/completions": ("chat", "/v1/chat/completions"),
                                     b"/v1/completions": ("completions", "/v1/completions")}
_HAND_OFF_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
MAX_HEAD = 32 * 1024  # a head not complete within this many bytes goes to aiohttp (which bounds its lines)
PIPELINE_LIMIT = 256 * 1024  # bytes of the next requests kept while one is served

Handler = Callable[["FrontRequest", str, str], Awaitable[web.StreamResponse]]


class FrontProtocol(asyncio.Protocol):
    """One client connection: the fast lane until a request it does not serve, then aiohttp's."""

    def __init__(self, server: EdgeServer, handler: Handler) -> None:
        self.server = server
        self.app: web.Application = server.app
        self.edge = server.edge
        self.date = server.date
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buf: list[bytes] = []  # the bytes of the request being parsed (a hand-off replays them)
        self.queued: list[bytes] = []  # bytes of later requests that came while one is served
        self.queued_size = 0
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.request: FrontRequest | None = None
        self.task: asyncio.Task[None] | None = None
        self.hand_off = False  # decided while parsing: done once the parser returns
        self.handed = False
        self.closing = False  # close once the request in flight is answered
        self.keep_alive = True
        self.timer: asyncio.TimerHandle | None = None  # see _arm
        self.timer_at = 0.0
        self.due = 0.0
        self.due_kind: str | None = None
        from gateway.state import SNAPSHOT  # noqa: PLC0415 - the state module imports the forwarding path
        self.snapshots = self.app[SNAPSHOT]
        self.head_started = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.body_seen = 0  # bytes read after the head of the request in flight
        self.last = b""  # the read being parsed
        self.head_size = 0
        self.lingering = False  # answered before its body came: the rest is read (and dropped) for a while
        self.successor: Any = None  # aiohttp's handler, once the connection was handed over

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections[self] = transport  # type: ignore[index]  # counted, and shut down with the rest
        if len(self.server._connections) > self.edge.max_connections:
            self.edge.refused_connections += 1
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head_started = True  # the first head is timed from the connection's start
        self._arm(self.edge.header_timeout_s, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.pop(self, None)  # type: ignore[call-overload]
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: its request ends (upstream closed, counted)
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(ConnectionResetError("the client closed the connection"))
            self.drain_waiter.exception()
        self.parser = None  # type: ignore[assignment]  # its callbacks are this object's: a cycle

    def data_received(self, data: bytes) -> None:
        request = self.request
        if request is not None and request.done.done():  # the next request waits (pipelining)
            self._queue(data)
            return
        self._feed(data)

    def _queue(self, data: bytes) -> None:
        self.queued.append(data)
        self.queued_size += len(data)
        if self.queued_size > PIPELINE_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # -- parsing
    def _feed(self, data: bytes) -> None:
        if self.request is None and not self.lingering:
            if not self.head_started:
                self.head_started = True
                self._arm(self.edge.header_timeout_s, "head")
            self.buf.append(data)  # a hand-over replays the request from its first byte
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self.hand_off = True
                self._hand_over()
                return
        else:
            self.body_seen += len(data)
        self.last = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.hand_off = self.request is None
        except httptools.HttpParserError:
            if self.request is None:
                self.hand_off = True  # aiohttp answers malformed requests (a quiet 400)
            elif not self.request.done.done():
                self._abort_request()  # a body that breaks the framing ends the connection
            # else: bytes after a complete request, parsed again with a fresh parser later
        if self.hand_off and not self.handed:
            self._hand_over()

    def on_url(self, url: bytes) -> None:
        if self.request is None:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.request is None:
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.request is not None or self.hand_off:
            return  # the head of a pipelined request: parsed again once the one in flight is answered
        parser = self.parser
        length = None
        for name, value in self.raw_headers:
            low = name.lower()
            if low in _HAND_OFF_HEADERS:
                self.hand_off = True
                return
            if low == b"content-length":
                length = int(value) if value.isdigit() and length is None else -1
        route = HOT.get(self.url)
        g = self.snapshots.current.config.gateway
        if (route is None or parser.get_method() != b"POST" or parser.get_http_version() != "1.1"
                or length is None or length < 0 or length > g.max_body_bytes):
            self.hand_off = True
            return
        raw = b"".join(self.buf)
        start = len(raw) - len(raw.lstrip(b"\r\n"))  # empty lines before a request are allowed
        head_end = raw.find(b"\r\n\r\n", start)
        if head_end < 0:
            self.hand_off = True
            return
        self.body_seen = len(raw) - head_end - 4  # body bytes (and maybe more) read with the head
        self._disarm()  # the head is complete
        self.head_started = False
        self.keep_alive = parser.should_keep_alive() and not self.closing
        headers = CIMultiDictProxy(CIMultiDict([(n.decode("utf-8", "surrogateescape"),
                                                 v.decode("utf-8", "surrogateescape")) for n, v in self.raw_headers]))
        request = self.request = FrontRequest(self, self.app, route[1], headers, length)
        self.edge.fast_requests += 1
        self.head_size = 0
        self.buf = []
        self.raw_headers = []
        self.url = b""
        self.task = self.loop.create_task(self._serve(request, route))

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request is not None and not request.done.done():
            request._body.append(body)

    def on_message_complete(self) -> None:
        if self.lingering:
            self.lingering = False
            if self.transport is not None:
                self.transport.close()  # the refused body has been read: the answer is safe to close on
            return
        request = self.request
        if request is None or request.done.done():
            return
        request.done.set_result(None)
        # what the read held beyond this request's body is the next request's: kept for later
        extra = self.body_seen - request.content_length
        if extra > 0:
            self._queue(self.last[-extra:])

    # -- serving
    async def _serve(self, request: FrontRequest, route: tuple[str, str]) -> None:
        try:
            response = await self.handler(request, *route)
            if request.stream is None:
                await self._answer(request, response)
            elif not request.stream.ended:
                await request.stream.write_eof()
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            self.keep_alive = False
        except Exception as exc:  # a bug: a 500 in OpenAI's format, the traceback in the log
            log.exception("error handling %s", request.path, exc_info=exc)
            self.keep_alive = False
            if request.stream is None and self.transport is not None:
                body = orjson.dumps(error_body("the gateway failed to handle the request", "internal_error", None,
                                               "internal_error"))
                resp = web.Response(status=500, body=body, content_type="application/json")
                with contextlib.suppress(ConnectionError):  # the client left meanwhile: nobody to tell
                    await self._answer(request, resp)
        finally:
            request.stream = None  # the answer refers to the request: no cycle left for the collector
            self._request_done(request)

    async def _answer(self, request: FrontRequest, response: web.StreamResponse) -> None:
        if self.transport is None:
            return
        await self.app.on_response_prepare.send(request, response)
        body = response.body if isinstance(response, web.Response) else b""
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, (bytes, bytearray)):
            raise TypeError(f"the fast lane writes bytes bodies, not {type(body).__name__}")
        headers = response.headers
        headers.popall("Transfer-Encoding", None)
        if isinstance(response, web.Response) and response.content_type and "Content-Type" not in headers:
            headers["Content-Type"] = response.content_type
        headers["Content-Length"] = str(len(body))
        headers.setdefault("Date", self.date.now())
        if response.keep_alive is False or not request.done.done():
            self.keep_alive = False  # refused before its body was read: not read further
        if not self.keep_alive:
            headers["Connection"] = "close"
        self.write(answer_head(response.status, response.reason, headers, "\r\n") + bytes(body))

    def _request_done(self, request: FrontRequest) -> None:
        self.task = None
        self.request = None
        if self.transport is None:
            return
        if not request.done.done() and not self.closing:
            # answered before its body came (a refusal): closing now, with unread data, would
            # reset the connection and could lose the answer; the rest is read for a while
            self.lingering = True
            self._arm(LINGER_S, "linger")
            return
        if not self.keep_alive or self.closing:
            self.transport.close()
            return
        queued, self.queued, self.queued_size = self.queued, [], 0
        self.transport.resume_reading()
        self.parser = httptools.HttpRequestParser(self)  # the old one may have read into a pipelined request
        self._arm(KEEPALIVE_S, "idle")
        for i, data in enumerate(queued):
            if self.transport is None:
                break
            if self.handed:
                for rest in queued[i:]:
                    self.successor.data_received(rest)  # aiohttp's now
                break
            if self.request is not None and self.request.done.done():
                for rest in queued[i:]:
                    self._queue(rest)  # the next one is being served already
                break
            self._feed(data)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        if not self.paused:
            return
        if self.drain_waiter is None or self.drain_waiter.done():
            self.drain_waiter = self.loop.create_future()
        await self.drain_waiter

    def _abort_request(self) -> None:
        """The body of the request in flight is malformed: the connection ends with it."""
        self.keep_alive = False
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- hand-over to aiohttp
    def _hand_over(self) -> None:
        self.handed = True
        head_due = self.due if self.due_kind == "head" else None
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        self.server._connections.pop(self, None)  # type: ignore[call-overload]
        if transport is None or transport.is_closing():
            return
        handler = self.successor = self.server.aiohttp_handler()
        self.edge.handed_over += 1
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if head_due is not None and handler.head_timer is not None:
            # the head keeps the time it had left: a hand-over does not restart its timeout
            handler.head_timer.cancel()
            handler.head_timer = self.loop.call_at(head_due, handler._head_timeout)
        data = b"".join(self.buf)
        self.buf = []
        self.parser = None  # type: ignore[assignment]
        if data and not transport.is_closing():
            handler.data_received(data)

    # -- timers
    # One timer per connection, for whichever deadline is set (the head's, the idle one, the
    # lingering one): setting a deadline later than the timer's moves nothing (the timer re-arms
    # when it fires early), so a kept-alive connection under load creates almost no timers.
    def _arm(self, delay: float, kind: str) -> None:
        self.due = due = self.loop.time() + delay
        self.due_kind = kind
        if self.timer is None or due < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = due
            self.timer = self.loop.call_at(due, self._tick)

    def _disarm(self) -> None:
        self.due_kind = None

    def _tick(self) -> None:
        self.timer = None
        kind = self.due_kind
        if kind is None or self.transport is None or self.handed:
            return
        if self.loop.time() < self.due:
            self.timer_at = self.due
            self.timer = self.loop.call_at(self.due, self._tick)
            return
        self.due_kind = None
        if kind == "head" and self.request is None:
            self.edge.slow_heads += 1
            self.transport.close()
        elif kind == "idle" and self.request is None and not self.head_started:
            self.transport.close()
        elif kind == "linger":
            self.transport.close()

    # -- the server's shutdown (aiohttp's Server.pre_shutdown / shutdown)
    def close(self) -> None:
        self.closing = True
        if self.request is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        self.closing = True
        task = self.task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=timeout)
        if self.transport is not None:
            self.transport.close()


KEEPALIVE_S = 75.0  # as gateway.edge (nginx's)
LINGER_S = 1.0  # as gateway.edge
