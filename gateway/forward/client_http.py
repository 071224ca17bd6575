"""The client side of a streamed answer: SSE over the aiohttp response, then straight into the
client's transport with chunked framing (no coroutine switch per upstream read)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import sse_error_event
from gateway.forward.client_stream import ClientGone
from gateway.forward.exchange import Exchange
from gateway.forward.ledger import Ledger
from gateway.sse import KEEPALIVE
from routing.plan import Candidate


class DirectRequest(Protocol):
    """A request of the gateway's fast lane (``gateway.front.FrontRequest``): a streamed answer's
    head is written by it, not by aiohttp."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    async def open_stream(self, headers: CIMultiDict[str]) -> web.StreamResponse: ...


ClientRequest = web.Request | DirectRequest


class HttpStream:
    """A :class:`~gateway.forward.client_stream.ClientStream` to the client's HTTP response.
    The only part of the forwarding path that holds the client's request."""

    def __init__(self, request: ClientRequest, ex: Exchange, ledger: Ledger) -> None:
        self.request = request
        self.ex = ex
        self.ledger = ledger
        self.response: web.StreamResponse | None = None  # once the head is sent
        self.transport: asyncio.Transport | None = None  # where push writes, once the answer opened
        self.chunked = False
        self.ends_inline: Callable[[], None] | None = None

    @property
    def committed(self) -> bool:
        return self.response is not None

    async def _head(self, cand: Candidate | None, model: str | None, upstream_headers: dict[str, str],
                    attempts: int | None = None) -> web.StreamResponse:
        """Send the response head (once).  Sent by a keep-alive before any token, it cannot
        name the region that will answer: an SSE comment does, later."""
        if self.response is None:
            headers: CIMultiDict[str] = CIMultiDict(upstream_headers)  # vLLM says content-type, others Content-Type
            headers.setdefault("Content-Type", "text/event-stream; charset=utf-8")
            headers.update(self.ex.headers(cand, model, attempts))
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            if isinstance(self.request, web.BaseRequest):
                self.response = web.StreamResponse(status=200, headers=headers)
                await self.response.prepare(self.request)
            else:  # the fast lane writes the head itself
                self.response = await self.request.open_stream(headers)
        return self.response

    async def keepalive(self, attempts: int) -> None:
        response = await self._head(None, None, {}, attempts)
        await response.write(KEEPALIVE)

    async def open(self, cand: Candidate, model: str | None, upstream_headers: dict[str, str]) -> bytes:
        early = self.response is not None  # keep-alive comments went out before a token
        response = await self._head(cand, model, upstream_headers)
        self.transport = self.request.transport
        self.chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        # a response that can be told its chunked body was ended by push (the fast lane's)
        self.ends_inline = getattr(response, "ended_inline", None)
        return f": served by region={cand.region} pool={cand.pool.name}\n\n".encode() if early else b""

    async def write(self, data: bytes, last: bool = False) -> None:
        assert self.response is not None
        try:
            if last:  # the events and the end of the chunked body in one write
                await self.response.write_eof(data)
            else:
                await self.response.write(data)
        except ConnectionResetError as exc:
            raise ClientGone() from exc

    def push(self, data: bytes, last: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientGone()
        if not self.chunked:
            transport.write(data)
        elif last and self.ends_inline is not None:  # the fast lane's: the end in the same write
            transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
            self.ends_inline()
        else:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def room(self) -> int | None:
        return None

    def gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def finish(self, cand: Candidate, usage: dict[str, Any] | None, status: str) -> web.StreamResponse:
        assert self.response is not None
        self.ledger.usage(self.ex, usage)
        self.ledger.count(self.ex, cand.region, status, committed=True)
        # the client may close as soon as it reads [DONE], before the chunked terminator: the
        # answer was delivered, and aiohttp meets the closed transport again quietly
        try:
            await self.response.write_eof()
        except ConnectionResetError:
            pass
        return self.response

    async def give_up(self, cand: Candidate, message: str) -> web.StreamResponse:
        """An in-band error event and no [DONE]: never a truncated stream presented as success."""
        await self.write(sse_error_event(message))
        return await self.finish(cand, None, "stream_error")

    async def fail(self, message: str, type_: str, code: str | None) -> web.StreamResponse:
        assert self.response is not None
        try:
            await self.response.write(sse_error_event(message, type_, code))
            await self.response.write_eof()
        except ConnectionResetError:  # the client left: nothing to tell it
            pass
        return self.response
