"""The client side of the HTTP server, bounded: what aiohttp's own server does not limit.

- A request head must arrive within ``gateway.header_timeout_s`` of its first byte (of the
  connection, for the first request): slowloris connections are closed.
- At most ``gateway.max_connections`` connections per process; more are closed at once.  An
  idle kept-alive connection is closed after :data:`KEEPALIVE_S` (aiohttp's default is an hour).
- Request bodies are never inflated (``auto_decompress`` off: a compressed body is refused
  with 415 by the handler, see :func:`gateway.request.read_body`), and a refused body is not
  read on for more than :data:`LINGER_S` seconds.
- A malformed HTTP request is answered with an OpenAI-format 400 and logged as one line, at
  most one per :data:`LOG_EVERY_S` seconds (with the count of those not logged), instead of
  a traceback each.
- ``Server`` names the product only, not the Python and aiohttp versions.

aiohttp offers no public hook for these, so the handler and server classes are extended here
(aiohttp is pinned below 4 in pyproject.toml)."""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.config import GatewayCfg
from gateway.errors import error_body

SERVER_NAME = "infercdn"
LINGER_S = 1.0
KEEPALIVE_S = 75.0  # as nginx
LOG_EVERY_S = 10.0
log = logging.getLogger("infercdn.edge")


@dataclass(slots=True)
class EdgeLimits:
    clock: Callable[[], float]  # the runtime's (gateway/state.py)
    header_timeout_s: float = 10.0
    max_connections: int = 10000
    fast_lane: bool = False  # connections start in gateway.front's protocol
    refused_connections: int = 0  # closed at once: over max_connections
    slow_heads: int = 0  # closed: no complete head within header_timeout_s
    bad_requests: int = 0
    fast_requests: int = 0  # served by the fast lane (gateway.front)
    handed_over: int = 0  # connections the fast lane gave to aiohttp
    _logged_at: float = float("-inf")
    _unlogged: int = 0

    @classmethod
    def of(cls, g: GatewayCfg, clock: Callable[[], float]) -> EdgeLimits:
        return cls(clock, g.header_timeout_s, g.max_connections, g.fast_lane)

    def note_bad_request(self, peer: str | None, exc: BaseException | None) -> None:
        """One line per LOG_EVERY_S at most, however many malformed requests arrive."""
        self.bad_requests += 1
        now = self.clock()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        reason = str(exc).splitlines()[0][:200] if exc is not None else "bad request"
        log.warning("malformed HTTP request from %s: %s: %s%s", peer, type(exc).__name__, reason, more)
        self._logged_at, self._unlogged = now, 0


class EdgeHandler(RequestHandler):
    """aiohttp's connection handler with a head timeout, a connection cap and quiet 400s."""

    def __init__(self, manager: Any, *, edge: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.edge = edge
        self.head_timer: asyncio.TimerHandle | None = None
        self.heads_at_arm = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager._connections) > self.edge.max_connections:
            self.edge.refused_connections += 1
            self.force_close()
            return
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.head_timer is not None:
            if self._request_count != self.heads_at_arm:
                self._disarm()  # the head is complete
        elif not self._request_in_progress and not self._messages and not self._force_close:
            self._arm()  # the first bytes of the next head on a kept-alive connection

    def _arm(self) -> None:
        self.heads_at_arm = self._request_count
        self.head_timer = self._loop.call_later(self.edge.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self._request_count == self.heads_at_arm and not self._request_in_progress and not self._messages:
            self.edge.slow_heads += 1
            self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or a handler that raised: an
        OpenAI-format JSON error, never a traceback in the body; a bug (5xx) keeps its
        traceback in the log, a malformed request gets one rate-limited line."""
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            body = error_body("the gateway failed to handle the request", "internal_error", None, "internal_error")
        else:
            self.edge.note_bad_request(request.remote, exc)
            body = error_body("the HTTP request is malformed", "invalid_request_error", None, "bad_http_request")
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent")
        resp = web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers={"Server": SERVER_NAME})
        resp.force_close()
        return resp


class EdgeServer(web.Server):
    edge: EdgeLimits
    app: web.Application

    def __call__(self) -> Any:
        if self.edge.fast_lane:
            from gateway.front import FrontProtocol  # noqa: PLC0415 - front imports this module
            from gateway.handlers import generate  # noqa: PLC0415 - the handlers import the app's state
            return FrontProtocol(self, generate)
        return self.aiohttp_handler()

    @functools.cached_property
    def date(self) -> Any:
        """The fast lane's Date header (on the runtime's wall clock)."""
        from gateway.front_answer import DateHeader  # noqa: PLC0415
        from gateway.state import RUNTIME  # noqa: PLC0415
        return DateHeader(self.app[RUNTIME].wall)

    def aiohttp_handler(self) -> EdgeHandler:
        return EdgeHandler(self, loop=self._loop, edge=self.edge, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are :class:`EdgeHandler`s."""

    def __init__(self, app: web.Application, edge: EdgeLimits, **kwargs: Any) -> None:
        kwargs.setdefault("lingering_time", LINGER_S)
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_S)
        super().__init__(app, auto_decompress=False, **kwargs)
        self.edge = edge

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = EdgeServer  # same object, a handler factory that builds EdgeHandlers
        server.edge = self.edge  # type: ignore[attr-defined]
        server.app = self.app  # type: ignore[attr-defined]
        return server


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the product's name, not its stack's versions."""
    response.headers["Server"] = SERVER_NAME
