"""One upstream attempt before anything is committed to the client: connect (or reuse),
send, and classify what came back within the first-token deadline."""
from __future__ import annotations

import asyncio
import functools
import time
from urllib.parse import urlsplit

from gateway.config import UpstreamLimitsCfg
from gateway.forward.upstream import (DEFAULT_LIMITS, Failed, Ready, Refused, UpstreamConn, UpstreamLost, UpstreamPool,
                              UpstreamTooLarge, _first_token_seen)
from routing.outcome import Outcome
from routing.retry import parse_retry_after

STALL_S = 0.05  # how late a deadline may fire before the gateway blames its own loop
# what of an upstream's head reaches the client: OpenAI's informational headers; never cookies,
# CORS grants, hop-by-hop or caching headers of someone else's server.  The gateway sets the
# Content-Type itself (JSON, or an event stream): a pool cannot make a client render HTML.
_RELAYED = frozenset({"openai-model", "openai-processing-ms", "openai-version"})


@functools.lru_cache(maxsize=4096)  # a handful of endpoint URLs, parsed once each
def _key(url: str) -> tuple[tuple[str, str, int], str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "127.0.0.1"
    path = parts.path or "/"
    return (parts.scheme, host, port), (path + ("?" + parts.query if parts.query else ""))


class UpstreamClient:
    def __init__(self, connect_s: float) -> None:
        self.pool = UpstreamPool(connect_s)

    async def close(self) -> None:
        self.pool.close()

    async def open(self, url: str, body: bytes, headers: dict[str, str], stream: bool,
                   first_token_s: float, limits: UpstreamLimitsCfg = DEFAULT_LIMITS) -> Ready | Failed | Refused:
        """POST and wait, within ``first_token_s``, for the response head and then the whole
        body (non-stream) or the first event that carries a token (stream)."""
        key, path = _key(url)
        head = _request_head(path, key, headers, len(body))
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        due = loop.time() + first_token_s
        conn: UpstreamConn | None = None
        stale = 0
        try:
            async with asyncio.timeout_at(due):
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
                          f"no {what} within {time.monotonic() - t0:.3g} s"
                          + (f" (the gateway's loop ran {late:.3g} s late)" if stall else ""), local_stall=stall)
        except UpstreamLost as exc:
            if conn is not None:
                conn.abort()
            exc.__traceback__ = None  # its frames hold the connection: no cycle through the future
            outcome = Outcome.UPSTREAM_TOO_LARGE if isinstance(exc, UpstreamTooLarge) else Outcome.RESET
            return Failed(outcome, str(exc))
        except OSError as exc:
            if conn is not None:
                conn.abort()
            return Failed(Outcome.CONNECT_ERROR, f"connect failed: {exc.strerror or exc}")
        except BaseException:
            if conn is not None:
                conn.abort()
            raise

    async def _exchange(self, conn: UpstreamConn, data: list[bytes], stream: bool, t0: float) -> Ready | Failed | Refused:
        conn.got_bytes = False
        conn.send(data)
        await conn.head
        headers_s = time.monotonic() - t0
        if conn.status != 200 or not stream:
            if not conn.complete:
                await _wait(conn)
            body = conn.take()
            if conn.status != 200:
                result = _not_ok(conn, body)
                conn.release()
                return result
            return Ready(conn, body, time.monotonic() - t0, _relay_headers(conn))
        if not _token_or_end(conn):
            await _wait(conn)
        conn.hold()
        first = conn.take()
        if not first:
            conn.abort()
            return Failed(Outcome.BAD_STREAM, "upstream closed the stream before any data")
        return Ready(conn, first, time.monotonic() - t0, _relay_headers(conn), headers_s)


async def _wait(conn: UpstreamConn) -> None:
    """Until the connection's waiter is resolved (a first token, the body's end); at once when
    the connection already failed (a bound crossed in the read that completed the head)."""
    if conn.closed:
        raise conn.lost()
    conn.waiter = conn.loop.create_future()
    await conn.waiter


def _token_or_end(conn: UpstreamConn) -> bool:
    return conn.complete or _first_token_seen(conn.buf)


def _request_head(path: str, key: tuple[str, str, int], headers: dict[str, str], length: int) -> bytes:
    host = key[1] if key[2] in (80, 443) else f"{key[1]}:{key[2]}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}", "Connection: keep-alive"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _relay_headers(conn: UpstreamConn) -> dict[str, str]:
    out = {}
    for name, value in conn.headers:
        k = name.decode("latin-1")
        if k.lower() in _RELAYED:
            out[k] = value.decode("latin-1")
    return out


def _retry_after(conn: UpstreamConn) -> str | None:
    return next((v.decode("latin-1") for k, v in conn.headers if k.lower() == b"retry-after"), None)


def capped_retry_after(value: str | None, cap_s: float) -> str | None:
    """An upstream's Retry-After as whole seconds within ``cap_s`` (None when unparsable)."""
    delay = parse_retry_after(value, time.time())
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
