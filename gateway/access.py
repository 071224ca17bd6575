"""The access log: one JSON line per completion request (``gateway.access_log``).

What an operator needs to follow one request: its id, who asked (tenant, client address), for
which model, where it was served (region, pool, endpoint, the model that answered), every
attempt and how it ended, the final status (``499`` when the client left first, as nginx
writes it; ``stream_error`` when a stream had to end with an in-band error), time to first
token, duration and tokens.

Lines are buffered and written at most every ``FLUSH_S`` (or when 64 KiB are waiting), so a
busy gateway makes a write system call per batch, not per request.  A file target is reopened
on reload (rotate it, then ``kill -HUP``).  stdout and stderr are written through their buffers,
blocking, as nginx writes its access log: a consumer that stops reading them stalls the gateway,
so give a slow log shipper a file."""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from aiohttp import web

from gateway.forward.exchange import Exchange
from gateway.state import RUNTIME

FLUSH_S = 0.5
FLUSH_BYTES = 64 * 1024
# request[EXCHANGE]: the request's Exchange, once the proxy made one (RequestKey: aiohttp >= 3.13)
EXCHANGE: Any = web.RequestKey("exchange", Exchange) if hasattr(web, "RequestKey") else "infercdn.exchange"


class AccessLog:
    def __init__(self, target: str) -> None:
        self.target = target
        self.enabled = target != "off"
        self.buf = bytearray()
        self.file: IO[bytes] | None = None
        self._owned = False
        self.open()

    def open(self) -> None:
        if not self.enabled:
            return
        if self.target in ("stdout", "stderr"):
            stream = sys.stdout if self.target == "stdout" else sys.stderr
            self.file = getattr(stream, "buffer", None) or _TextAdapter(stream)
        else:
            self.file = open(Path(self.target).expanduser(), "ab")  # noqa: SIM115 - closed in close()
            self._owned = True

    def reopen(self) -> None:
        """After the file was rotated: write to a fresh one at the same path."""
        if self._owned:
            self.flush()
            self.close()
            self.open()

    def write(self, line: dict[str, Any]) -> None:
        self.buf += orjson.dumps(line)
        self.buf += b"\n"
        if len(self.buf) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buf or self.file is None:
            return
        data, self.buf = bytes(self.buf), bytearray()
        with contextlib.suppress(OSError, ValueError):  # a closed or full log never stops serving
            self.file.write(data)
            self.file.flush()

    def close(self) -> None:
        self.flush()
        if self._owned and self.file is not None:
            self.file.close()
            self.file = None
            self._owned = False


class _TextAdapter:
    """A text stream without a binary buffer (a test runner's capture) written as bytes."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode())

    def flush(self) -> None:
        self.stream.flush()


@dataclass(slots=True)
class Note:
    """What the handler learnt of one request before (or without) the proxy."""

    kind: str
    started: float = field(default_factory=time.monotonic)
    status: int | str = 500  # until the handler knows better (an unexpected error)
    request_id: str | None = None
    model: str | None = None
    tenant: str | None = None
    client_ip: str | None = None
    error: str | None = None


def line(request: web.Request, note: Note) -> dict[str, Any]:
    """The access-log line of one request; what the exchange learnt (where it was served, the
    attempts, tokens) when it got that far."""
    out: dict[str, Any] = {"time": round(request.app[RUNTIME].wall(), 3), "request_id": note.request_id, "path": request.path,
                           "model": note.model, "tenant": note.tenant, "client_ip": note.client_ip}
    status = note.status
    ex = request.get(EXCHANGE)
    if isinstance(ex, Exchange):
        if ex.status is not None and status != 499:
            status = int(ex.status) if ex.status.isdigit() else ex.status
        served = ex.served_by
        usage = ex.usage or {}
        out.update(stream=ex.client_stream, served_model=ex.served_model, served_models=list(ex.served_models),
                   region=served.region if served else None, pool=served.pool.name if served else None,
                   endpoint=served.endpoint.id if served else None, attempts=ex.attempts,
                   tried=[f"{t.cand.endpoint.id}:{t.outcome.value}" for t in ex.tried],
                   ttft_ms=round(ex.ttft_s * 1000, 1) if ex.ttft_s is not None else None,
                   prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))
    out["status"] = status
    out["duration_ms"] = round((time.monotonic() - note.started) * 1000, 1)
    if note.error is not None:
        out["error"] = note.error
    return out


async def flusher(app: web.Application, log: AccessLog):  # type: ignore[no-untyped-def]
    """Flush the buffer every FLUSH_S while the app runs, and at its end."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            log.flush()

    task = asyncio.get_running_loop().create_task(loop()) if log.enabled else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log.close()
