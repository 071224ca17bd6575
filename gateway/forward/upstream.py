"""The upstream side: a pool of raw HTTP/1.1 keep-alive connections parsed with httptools.

Body bytes go from ``data_received`` straight into a sink — the client's transport once a
stream is committed — with no coroutine switch per token (an aiohttp client stream reader
costs about three times as much user CPU per token here; docs/bench.md has the figures).  ``open``
returns before anything reaches the client: ``Ready`` (a 200 with its first token, or a
whole non-stream body), ``Failed`` (try the next candidate) or ``Refused`` (a 4xx to relay).

Every byte read here is bounded (``upstream_limits``): the head as it arrives, a buffered body
by its kind (error, non-stream, before the first token); crossing a bound fails the exchange
with :class:`UpstreamTooLarge` and closes the connection."""
from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from gateway.config import UpstreamLimitsCfg
from routing.outcome import Outcome

MAX_IDLE_PER_ENDPOINT = 512


class UpstreamLost(Exception):
    """The upstream connection broke (reset, closed early, unparsable HTTP)."""


class UpstreamTooLarge(UpstreamLost):
    """The upstream sent more than ``upstream_limits`` allows (a head, an event, a body)."""


DEFAULT_LIMITS = UpstreamLimitsCfg()
READ_SIZE = 256 * 1024  # the most one read of the event loop delivers (asyncio's and uvloop's)


def _first_token_seen(buf: bytearray) -> bool:
    """A complete event that is not the bare role announcement vLLM sends before a token
    (searched in place, event by event: the first or second event decides it)."""
    end = buf.rfind(b"\n\n")
    start = 0
    while end >= 0:
        stop = buf.find(b"\n\n", start, end)
        if stop < 0:
            stop = end  # the last complete event
        if stop > start and buf.find(b'"role"', start, stop) < 0:
            return True
        if stop == end:
            return False
        start = stop + 2
    return False


class UpstreamConn(asyncio.Protocol):
    """One connection; one exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # httptools calls on_body once per chunk (once per event of a stream): the chunks go
        # to a list by its own append, no Python frame each, and are handled once per read
        # (``_flush``).  The list is kept for the connection's life (its append is bound).
        self.batch: list[bytes] = []
        self.on_body = self.batch.append
        self.parser = httptools.HttpResponseParser(self)
        self.limits = DEFAULT_LIMITS
        self.stream = False
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.head_bytes = 0
        self.buf_limit = 0
        self.overflow: UpstreamTooLarge | None = None
        self.failure: BaseException | None = None  # why the exchange failed (the first reason)
        self.paused = False  # reading paused between the first token and the pump
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.complete = False
        self.buf = bytearray()
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.waiter: asyncio.Future[None] | None = None  # first token / whole body / pump end
        self.wait_for_token = False
        self.sink: Callable[[bytes], None] | None = None
        self.pool_on_complete = False
        self.got_bytes = False
        self.batch.clear()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.status == 0:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self.batch:
                self._flush()
            if self.status == 0 and self.head_bytes > self.limits.max_head_bytes:
                self.overflow = UpstreamTooLarge(f"upstream response head over {self.limits.max_head_bytes} bytes")
            if self.overflow is not None:
                raise self.overflow
        except httptools.HttpParserError as unparsable:  # each clause its own name: one name, one type
            self._fail(self.overflow or UpstreamLost(f"unparsable HTTP from upstream: {unparsable}"))
            self.abort()
        except Exception as exc:  # raised by a sink (or a bound): the stream ends with it
            self._fail(exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.complete:
            self._fail(UpstreamLost("upstream closed the connection" + (f" ({exc})" if exc else "")))
        # nothing of the exchange outlives the connection: buffers go, and the parser (whose
        # callbacks are this object's methods, a reference cycle) with them
        self.buf = bytearray()
        self.batch.clear()
        self.sink = None
        self.parser = None  # type: ignore[assignment]

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        lim = self.limits
        self.buf_limit = (lim.max_error_body_bytes if self.status != 200
                          else lim.max_event_bytes if self.stream else lim.max_body_bytes)
        self.wait_for_token = self.stream and self.status == 200
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)

    def _flush(self) -> None:
        """The body chunks of one read: to the sink (one client write per read), or buffered
        until the first token (or the whole body) is in."""
        batch = self.batch
        body = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        if self.sink is not None:
            self.sink(body)
            return
        if self.overflow is not None:
            return
        self.buf += body
        if self.wait_for_token and _first_token_seen(self.buf):
            # what follows the first token waits for the pump: reading pauses until it takes over
            # (the rest of this read is kept, so the buffer exceeds the bound by one read at most)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            self.hold()
        elif len(self.buf) > self.buf_limit and (not self.paused or len(self.buf) > self.buf_limit + READ_SIZE):
            what = "error body" if self.status != 200 else "first event" if self.stream else "body"
            self.overflow = UpstreamTooLarge(f"upstream {what} over {self.buf_limit} bytes")
            self.buf = bytearray()

    def on_message_complete(self) -> None:
        if self.batch:
            self._flush()
        if self.overflow is not None:
            self._fail(self.overflow)  # a body over its bound is no answer, even a complete one
            return
        self.complete = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.pool_on_complete:
            self.release()

    # -- use
    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        for fut in (self.head, self.waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # no "never retrieved" noise for an idle connection's head

    def lost(self) -> BaseException:
        """The exception for a closed connection: why it failed, if that is known."""
        return self.failure if self.failure is not None else UpstreamLost("upstream closed the connection")

    def send(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def release(self) -> None:
        """Back to the pool when the exchange is over and the connection reusable; else
        once it completes (a stream whose [DONE] arrived before its last chunk)."""
        if self.closed:
            return
        if not self.complete:
            self.sink = _discard
            self.pool_on_complete = True
            self.resume()
            return
        if not self.keep_alive:
            self.abort()
            return
        self.resume()  # paused after a first token that completed the stream, or by a slow client
        self.reset()
        self.pool.put(self)

    def hold(self) -> None:
        """Stop reading after the first token until the pump takes over (``resume``)."""
        self.wait_for_token = False
        if self.transport is not None and not self.closed and not self.paused and not self.complete:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Reading again, after the pause that follows the first token, or the relay's own
        (a slow client): a connection goes back to the pool reading."""
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()  # a no-op when reading

    def finish(self) -> None:
        """The pump's consumer has what it needs: end the wait without waiting for the body end."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _discard(_: bytes) -> None:
    pass


@dataclass(slots=True)
class Ready:
    """A 200 whose first token (stream) or whole body (non-stream) arrived."""

    conn: UpstreamConn
    first: bytes
    ttfb_s: float  # request sent → first token (includes the model's time to first token)
    headers: dict[str, str]
    headers_s: float | None = None  # request sent → response head: a network round trip for streams
    endpoint_id: str = ""
    stale: int = 0  # reused connections the upstream had closed, retried at once on a fresh one
    # the end of the endpoint's lease (gateway.forward.dialer.Lease), called once, when the
    # answer ends whichever way (close or release)
    on_end: Callable[[], None] | None = None
    ended: bool = False  # closed or released (whichever came first; the other is then a no-op)

    def close(self) -> None:
        if not self.ended:
            self.conn.abort()  # the upstream sees the disconnect and stops generating
            self._end()

    def release(self) -> None:
        if not self.ended:
            self.conn.release()
            self._end()

    def _end(self) -> None:
        self.ended = True
        end, self.on_end = self.on_end, None
        if end is not None:
            end()

    async def pump(self, sink: Callable[[bytes], None]) -> None:
        """Deliver the rest of the body to ``sink`` from ``data_received`` until the body ends
        or ``conn.finish()``; raises UpstreamLost or the sink's exception."""
        conn = self.conn
        rest = conn.take()
        if rest:
            sink(rest)
        if conn.complete:
            return
        if conn.closed:
            raise conn.lost()
        conn.waiter = conn.loop.create_future()
        conn.sink = sink
        conn.resume()
        try:
            await conn.waiter
        except BaseException:
            conn.waiter = None  # as in the dialer's wait: no cycle through what ended it
            raise


@dataclass(slots=True)
class Failed:
    """Retryable on another candidate: we could not get a usable answer."""

    outcome: Outcome
    detail: str
    status: int | None = None
    body: bytes = b""
    retry_after: str | None = None
    local_stall: bool = False  # the deadline fired late: the gateway's loop stalled, not the endpoint
    stale: int = 0  # as Ready.stale


@dataclass(slots=True)
class Refused:
    """A 4xx other than 429: the request's fault; relayed to the client unchanged."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None  # as sent; parsed and capped before it reaches a client
    stale: int = 0  # as Ready.stale


class ConnectTimer:
    """``timeouts.connect_s`` measured on the connect, not on the gateway's own loop (issue 10,
    defect 5): when the time is up, the kernel is asked whether the handshake completed (a
    zero-timeout poll of the socket) and, if the loop itself lagged (the timer fired late), the
    connect gets the time the loop took from it.  Only a handshake that the kernel has not
    completed within ``connect_s`` of loop time the connect had is a connect timeout: a starved
    loop does not blame an endpoint (nor feed its outlier detection or breaker).  The request's
    first-token deadline still bounds the whole wait."""

    __slots__ = ("loop", "task", "connect_s", "sock", "handle", "fired", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_s: float) -> None:
        self.loop = loop
        self.task = asyncio.current_task()
        self.connect_s = connect_s
        self.sock: socket.socket | None = None
        self.fired = False
        self.when = loop.time() + connect_s
        self.handle = loop.call_at(self.when, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        late = now - self.when
        if self.sock is not None and _connected(self.sock):
            self.when = now + min(self.connect_s, 0.05)  # done in the kernel: the loop has work left
        elif late > max(0.01, self.connect_s * 0.1):
            self.when = now + min(self.connect_s, late)  # the loop stalled: the connect gets that time
        else:
            self.fired = True
            assert self.task is not None
            self.task.cancel()
            return
        self.handle = self.loop.call_at(self.when, self._check)

    def expired(self) -> bool:
        if self.fired and self.task is not None:
            self.task.uncancel()
        return self.fired

    def handed_over(self) -> bool:
        """The socket belongs to a transport now (which closes it)."""
        return self.sock is not None and self.sock.fileno() < 0

    def stop(self) -> None:
        self.handle.cancel()


def _connected(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has completed in the kernel (writable, no error)."""
    try:
        _, writable, _ = select.select((), (sock,), (), 0)
        return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    except (OSError, ValueError):
        return False


class UpstreamPool:
    """Idle keep-alive connections per endpoint (scheme, host, port)."""

    def __init__(self, connect_s: float) -> None:
        self.connect_s = connect_s
        self.idle: dict[tuple[str, str, int], list[UpstreamConn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the pool's connections live on (looked up once: each lookup is a
        system call, getpid, in CPython 3.11)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def put(self, conn: UpstreamConn) -> None:
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) < MAX_IDLE_PER_ENDPOINT:
            idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: UpstreamConn) -> None:
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def acquire(self, key: tuple[str, str, int]) -> tuple[UpstreamConn, bool]:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        timer = ConnectTimer(loop, self.connect_s)
        try:
            family, kind, proto, _, addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
            sock = timer.sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            _, conn = await loop.create_connection(lambda: UpstreamConn(self, key), sock=sock, ssl=tls,
                                                   server_hostname=host if tls else None)
        except asyncio.CancelledError:
            if timer.sock is not None and not timer.handed_over():
                timer.sock.close()
            if timer.expired():
                raise TimeoutError() from None
            raise
        except BaseException:
            if timer.sock is not None and not timer.handed_over():
                timer.sock.close()
            raise
        finally:
            timer.stop()
        return conn, False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.abort()
        self.idle.clear()
