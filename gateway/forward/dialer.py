"""The dialer owns the upstream connections: one attempt before anything is committed to the
client (connect or reuse, send, classify what came back within the first-token deadline), under
the endpoint's in-flight lease.

The lease is taken once per attempt (``async with dialer.lease(cand)``) and ends once: when the
attempt fails, is cancelled or raises, at the end of the ``async with``; when it produced an
answer (:class:`Ready`), when that answer ends (``Ready.close``/``release``), which is why the
winner's lease outlives the race that found it."""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from mypy_extensions import mypyc_attr

from gateway.config import UpstreamLimitsCfg
from gateway.forward.upstream import (DEFAULT_LIMITS, Failed, Ready, Refused, UpstreamConn, UpstreamLost, UpstreamPool,
                                      UpstreamTooLarge, _first_token_seen)
from routing.observations import Observations
from routing.outcome import Outcome
from routing.plan import Candidate
from routing.retry import parse_retry_after

NOT_SERVED = "does not serve"
_OPTIONAL_PATHS = frozenset({"/v1/responses", "/tokenize", "/detokenize", "/v1/embeddings", "/v1/score",
                             "/v1/rerank"})

STALL_S = 0.05  # how late a deadline may fire before the gateway blames its own loop
# what of an upstream's head reaches the client: OpenAI's informational headers; never cookies,
# CORS grants, hop-by-hop or caching headers of someone else's server.  The gateway sets the
# Content-Type itself (JSON, or an event stream): a pool cannot make a client render HTML.
_RELAYED = frozenset({b"openai-model", b"openai-processing-ms", b"openai-version"})
_STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def not_served(path: str, refused: Refused) -> bool:
    """A pool's 404 for a path it has no route for (FastAPI's bare ``{"detail": "Not Found"}``,
    as vLLM answers an endpoint its model does not serve), not its 404 for a model."""
    return refused.status == 404 and path in _OPTIONAL_PATHS and b'"error"' not in refused.body


class Lease:
    """An endpoint's in-flight count (and half-open breaker slot), held by one attempt."""

    __slots__ = ("obs", "endpoint_id", "held", "handed")

    def __init__(self, obs: Observations, endpoint_id: str) -> None:
        self.obs = obs
        self.endpoint_id = endpoint_id
        self.held = False
        self.handed = False

    async def __aenter__(self) -> Lease:
        self.obs.acquire(self.endpoint_id)
        self.held = True
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self.handed or kind is not None:
            self.end()

    def hand_to(self, ready: Ready) -> None:
        """The attempt produced an answer: the lease ends when the answer does."""
        self.handed = True
        ready.on_end = self.end

    def end(self) -> None:
        """The one release of the lease (later calls do nothing)."""
        if self.held:
            self.held = False
            self.obs.release(self.endpoint_id)


@functools.lru_cache(maxsize=4096)  # a handful of endpoint URLs, parsed once each
def _key(url: str) -> tuple[tuple[str, str, int], str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "127.0.0.1"
    path = parts.path or "/"
    return (parts.scheme, host, port), (path + ("?" + parts.query if parts.query else ""))


@mypyc_attr(allow_interpreted_subclasses=True)  # the seam to the network that tests script
class Dialer:
    """Upstream attempts for one gateway; ``clock`` is the runtime's monotonic clock."""

    def __init__(self, connect_s: float, obs: Observations, clock: Callable[[], float]) -> None:
        self.pool = UpstreamPool(connect_s)
        self.obs = obs
        self.clock = clock

    async def close(self) -> None:
        self.pool.close()

    def lease(self, cand: Candidate) -> Lease:
        return Lease(self.obs, cand.endpoint.id)

    async def attempt(self, cand: Candidate, body: bytes, path: str, deadline_s: float, stream: bool,
                      limits: UpstreamLimitsCfg) -> Ready | Failed | Refused:
        """One request to one endpoint, under its lease (held on by a Ready until it ends)."""
        headers = _STREAM_HEADERS if stream else _JSON_HEADERS
        async with self.lease(cand) as lease:
            result = await self.open(cand.endpoint.url + path, body, headers, stream, deadline_s, limits)
            if isinstance(result, Refused) and not_served(path, result):
                # this pool does not serve the endpoint (an embeddings path on a generation model):
                # the next candidate may; not the endpoint's fault, nor the request's
                return Failed(Outcome.CLIENT_ERROR, f"{NOT_SERVED} {path} (404)", 404, result.body)
            if isinstance(result, Ready):
                result.endpoint_id = cand.endpoint.id
                lease.hand_to(result)
                if stream:
                    self.obs.record_ttft(cand.endpoint.id, result.ttfb_s * 1000)
            return result

    async def open(self, url: str, body: bytes, headers: dict[str, str], stream: bool,
                   first_token_s: float, limits: UpstreamLimitsCfg = DEFAULT_LIMITS) -> Ready | Failed | Refused:
        """POST and wait, within ``first_token_s``, for the response head and then the whole
        body (non-stream) or the first event that carries a token (stream)."""
        key, path = _key(url)
        head = _request_head(path, key, headers, len(body))
        t0 = self.clock()
        loop = self.pool.loop()
        due = loop.time() + first_token_s
        conn: UpstreamConn | None = None
        stale = 0
        timer = _Deadline(loop, due)
        try:
            try:
                for _ in range(2):  # a reused connection the server had closed: once more, fresh
                    conn, reused = await self.pool.acquire(key)
                    conn.limits, conn.stream = limits, stream
                    try:
                        result = await self._exchange(conn, [head, body], stream, t0)
                        result.stale = stale  # the caller shows the hidden try (x-infercdn-attempts)
                        return result
                    except UpstreamLost:
                        if not reused or conn.got_bytes:
                            raise
                        conn.abort()
                        stale += 1
                raise UpstreamLost("upstream closed the connection")
            except asyncio.CancelledError:
                if timer.stop():
                    raise asyncio.TimeoutError() from None
                raise
            finally:
                timer.stop()
        except asyncio.TimeoutError:
            if conn is not None:
                conn.abort()
            # the connect timeout (timeouts.connect_s) or the first-token deadline, whichever fired
            what = "connect" if conn is None else "first token"
            # a deadline that fired well after its time says the gateway's loop stalled (a burst
            # starving it): the endpoint may have answered in time, so it is not blamed for it
            late = loop.time() - due
            stall = late > max(STALL_S, first_token_s * 0.25)
            return Failed(Outcome.TIMEOUT if conn is not None else Outcome.CONNECT_ERROR,
                          f"no {what} within {self.clock() - t0:.3g} s"
                          + (f" (the gateway's loop ran {late:.3g} s late)" if stall else ""), local_stall=stall)
        except UpstreamLost as exc:
            if conn is not None:
                conn.abort()
            exc.__traceback__ = None  # its frames hold the connection: no cycle through the future
            outcome = Outcome.UPSTREAM_TOO_LARGE if isinstance(exc, UpstreamTooLarge) else Outcome.RESET
            return Failed(outcome, str(exc))
        except OSError as error:  # a name of its own: one name, one type (compilers of typed Python rely on it)
            if conn is not None:
                conn.abort()
            return Failed(Outcome.CONNECT_ERROR, f"connect failed: {error.strerror or error}")
        except BaseException:
            if conn is not None:
                conn.abort()
            raise

    async def _exchange(self, conn: UpstreamConn, data: list[bytes], stream: bool, t0: float) -> Ready | Failed | Refused:
        conn.got_bytes = False
        conn.send(data)
        await conn.head
        headers_s = self.clock() - t0
        if conn.status != 200 or not stream:
            if not conn.complete:
                await _wait(conn)
            body = conn.take()
            if conn.status != 200:
                result = _not_ok(conn, body)
                conn.release()
                return result
            return Ready(conn, body, self.clock() - t0, _relay_headers(conn))
        if not _token_or_end(conn):
            await _wait(conn)
        conn.hold()
        first = conn.take()
        if not first:
            conn.abort()
            return Failed(Outcome.BAD_STREAM, "upstream closed the stream before any data")
        return Ready(conn, first, self.clock() - t0, _relay_headers(conn), headers_s)


class _Deadline:
    """Cancels the current task at ``when`` (event-loop time): what ``asyncio.timeout_at`` does,
    for less than half its cost on the path every request takes.  ``stop`` ends it and says
    whether it fired (its cancellation is then taken back: the caller raises TimeoutError)."""

    __slots__ = ("task", "handle", "fired", "base")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task(loop)
        assert task is not None
        self.task: asyncio.Task[Any] | None = task
        self.fired = False
        self.base = task.cancelling()  # cancellations requested before: not ours to take back
        self.handle: asyncio.TimerHandle | None = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        self.fired = True
        if self.task is not None:
            self.task.cancel()

    def stop(self) -> bool:
        # once stopped it lets go of the task: a cancelled task keeps its CancelledError, whose
        # traceback holds the attempt's frame and so this timer (tests/security/test_no_cycles.py)
        task, self.task = self.task, None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            return False
        if self.fired and task is not None:
            self.fired = False
            # someone else cancelled the task too (the client left): that cancellation stands
            return task.uncancel() <= self.base
        return False


async def _wait(conn: UpstreamConn) -> None:
    """Until the connection's waiter is resolved (a first token, the body's end); at once when
    the connection already failed (a bound crossed in the read that completed the head)."""
    if conn.closed:
        raise conn.lost()
    conn.waiter = conn.loop.create_future()
    try:
        await conn.waiter
    except BaseException:
        # the future keeps what ended it (a cancellation: the client left), whose traceback
        # holds this frame and so the connection: no cycle (tests/security/test_no_cycles.py)
        conn.waiter = None
        raise


def _token_or_end(conn: UpstreamConn) -> bool:
    return conn.complete or _first_token_seen(conn.buf)


def _request_head(path: str, key: tuple[str, str, int], headers: dict[str, str], length: int) -> bytes:
    return _head_template(path, key, tuple(headers.items())) % length


@functools.lru_cache(maxsize=4096)  # per endpoint, path and kind of request: a few
def _head_template(path: str, key: tuple[str, str, int], headers: tuple[tuple[str, str], ...]) -> bytes:
    """The request head with its length left to fill in (``%d``)."""
    host = key[1] if key[2] in (80, 443) else f"{key[1]}:{key[2]}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Length: %d", "Connection: keep-alive"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(line.replace("%", "%%") if i != 2 else line for i, line in enumerate(lines))
            + "\r\n\r\n").encode("latin-1")


def _relay_headers(conn: UpstreamConn) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in conn.headers
            if name.lower() in _RELAYED}


def _retry_after(conn: UpstreamConn) -> str | None:
    return next((v.decode("latin-1") for k, v in conn.headers if k.lower() == b"retry-after"), None)


def capped_retry_after(value: str | None, cap_s: float, now: float) -> str | None:
    """An upstream's Retry-After as whole seconds within ``cap_s`` (None when unparsable);
    ``now``: the wall clock (an HTTP date is read against it)."""
    delay = parse_retry_after(value, now)
    return None if delay is None else str(max(1, round(min(delay, cap_s))))


def _not_ok(conn: UpstreamConn, body: bytes) -> Failed | Refused:
    status = conn.status
    if status == 429:
        return Failed(Outcome.HTTP_429, "upstream throttled (429)", 429, body, _retry_after(conn))
    if status >= 500:
        return Failed(Outcome.HTTP_5XX, f"upstream returned {status}", status, body)
    if status >= 400:
        return Refused(status, body, _relay_headers(conn), _retry_after(conn))
    return Failed(Outcome.BAD_STREAM, f"unexpected upstream status {status}", status, body)
