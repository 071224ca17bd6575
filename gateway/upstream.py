"""The upstream side of one attempt: open a request to an endpoint and classify what
came back, before anything is committed to the client.

Behind a small interface (``UpstreamClient.open`` → ``Ready`` | ``Failed`` | ``Refused``) so
the body pump can be replaced without touching the attempt loop."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from routing.outcome import Outcome

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
                         "server", "date"})


@dataclass(slots=True)
class Ready:
    """A 200 whose first body bytes (stream) or whole body (non-stream) arrived."""

    response: aiohttp.ClientResponse
    first: bytes
    ttfb_s: float  # request sent → first body bytes (includes the model's time to first token)
    headers: dict[str, str]
    headers_s: float | None = None  # request sent → response head: a network round trip for streams
    endpoint_id: str = ""

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.content.iter_any()

    def close(self) -> None:
        self.response.close()  # drops the connection: the upstream sees the disconnect

    def release(self) -> None:
        self.response.release()


@dataclass(slots=True)
class Failed:
    """Retryable on another candidate: we could not get a usable answer."""

    outcome: Outcome
    detail: str
    status: int | None = None
    body: bytes = b""
    retry_after: str | None = None


@dataclass(slots=True)
class Refused:
    """A 4xx other than 429: the request's fault; relayed to the client unchanged."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def relay_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}


def classify_exception(exc: BaseException) -> Outcome:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return Outcome.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Outcome.CONNECT_ERROR
    return Outcome.RESET


class UpstreamClient:
    """One pooled aiohttp session for all upstream traffic (TCP_NODELAY, keep-alive)."""

    def __init__(self, connect_s: float, limit: int = 0) -> None:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300,
                                         enable_cleanup_closed=True, keepalive_timeout=30)
        # read deadlines are the gateway's own (first-token deadline, stall watchdog)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=None)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                             auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self.session.close()

    async def open(self, url: str, body: bytes, headers: dict[str, str], stream: bool,
                   first_token_s: float) -> Ready | Failed | Refused:
        """POST and wait, within ``first_token_s``, for the response head and then the whole
        body (non-stream) or the first event that carries a token (stream)."""
        t0 = time.monotonic()
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_token_s):
                resp = await self.session.post(url, data=body, headers=headers)
                headers_s = time.monotonic() - t0
                if resp.status != 200:
                    return await _not_ok(resp)
                first = await (_first_token(resp) if stream else resp.read())
        except asyncio.TimeoutError:
            if resp is not None:
                resp.close()
            return Failed(Outcome.TIMEOUT, f"no first token within {first_token_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            if resp is not None:
                resp.close()
            return Failed(classify_exception(exc), f"{type(exc).__name__}: {exc}".rstrip(": "))
        except BaseException:
            if resp is not None:
                resp.close()
            raise
        if not first:
            resp.close()
            return Failed(Outcome.BAD_STREAM, "upstream closed the stream before any data")
        # a non-stream head arrives after the whole generation: no network signal in it
        return Ready(resp, first, time.monotonic() - t0, relay_headers(resp), headers_s if stream else None)


async def _first_token(resp: aiohttp.ClientResponse) -> bytes:
    """Read until a complete event that is not the bare role announcement of a chat stream
    (vLLM sends it before the first token), or the end of the body."""
    buf = b""
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return buf
        buf += chunk
        end = buf.rfind(b"\n\n")
        if end >= 0 and any(ev and b'"role"' not in ev for ev in buf[:end].split(b"\n\n")):
            return buf


async def _not_ok(resp: aiohttp.ClientResponse) -> Failed | Refused:
    try:
        body = await resp.read()
    finally:
        resp.release()
    if resp.status == 429:
        return Failed(Outcome.HTTP_429, "upstream throttled (429)", 429, body, resp.headers.get("Retry-After"))
    if resp.status >= 500:
        return Failed(Outcome.HTTP_5XX, f"upstream returned {resp.status}", resp.status, body)
    if resp.status >= 400:
        return Refused(resp.status, body, relay_headers(resp))
    return Failed(Outcome.BAD_STREAM, f"unexpected upstream status {resp.status}", resp.status, body)
