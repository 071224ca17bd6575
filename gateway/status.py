"""The fleet page: ``GET /status`` (one HTML file), ``/status/app.js`` (one script),
``/status/world.json`` (the land outline of the map, Natural Earth 1:110m, public domain) and
``/status/events``: server-sent events, one JSON document a second — the topology with each
endpoint's live state (``gateway.admin.topology``), traffic per region of the last minute
(``gateway.traffic``) and the models served.

Served from package data with no build step.  Like ``/admin/*``, only to
``gateway.admin_networks``.  The event stream is bounded: at most ``max_clients`` at once (more
get 503), one document built per second whoever asks, a client that leaves is dropped at its
next write (or at once: handler cancellation), and every stream ends when the gateway starts
to drain, so a shutdown never waits on a status page."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from gateway.admin import topology
from gateway.errors import error_body
from gateway.host_share import peer_inflight
from gateway.state import DRAINING, OBSERVATIONS, RUNTIME, SNAPSHOT, STATUS
from gateway.traffic import Traffic

STATIC = {  # path -> (file in gateway/static, content type)
    "/status": ("status.html", "text/html; charset=utf-8"),
    "/status/app.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status/world.json": ("world.json", "application/json"),
}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
}


class StatusFeed:
    """What the page serves: its files (read once), the document of the current second, and
    the count of open event streams."""

    def __init__(self, traffic: Traffic, clock: Callable[[], float], interval_s: float = 1.0,
                 max_clients: int = 16) -> None:
        self.traffic = traffic
        self.clock = clock
        self.interval_s = interval_s
        self.max_clients = max_clients
        self.clients = 0
        root = resources.files("gateway") / "static"
        self.files = {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}
        self._doc: tuple[int, bytes] | None = None

    def document(self, app: web.Application) -> bytes:
        """The JSON snapshot, built at most once per ``interval_s`` for all clients."""
        tick = int(self.clock() / self.interval_s)
        if self._doc is None or self._doc[0] != tick:
            self._doc = (tick, orjson.dumps(self.build(app)))
        return self._doc[1]

    def build(self, app: web.Application) -> dict[str, Any]:
        snapshot = app[SNAPSHOT].current
        topo = topology(snapshot, app[OBSERVATIONS], peer_inflight(app))
        return {"time": round(app[RUNTIME].wall(), 3), "draining": app[DRAINING].since is not None,
                "models": sorted(snapshot.models), **topo,
                "traffic": self.traffic.snapshot([r["name"] for r in topo["regions"]])}


async def static_file(request: web.Request) -> web.Response:
    body, ctype = request.app[STATUS].files[request.path]
    return web.Response(body=body, headers={"Content-Type": ctype, **PAGE_HEADERS})


async def status_events(request: web.Request) -> web.StreamResponse:
    feed = request.app[STATUS]
    if feed.clients >= feed.max_clients:
        return web.Response(status=503, body=orjson.dumps(error_body(
            f"too many status pages open (at most {feed.max_clients})", "service_unavailable_error", None,
            "too_many_streams")), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    feed.clients += 1
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")  # the browser reconnects 2 s after a stream ends
        while True:
            await resp.write(b"data: " + feed.document(request.app) + b"\n\n")
            if request.app[DRAINING].since is not None:
                break
            await asyncio.sleep(feed.interval_s)
    except ConnectionError:  # the client left (aiohttp: a write to a closing transport)
        pass
    finally:
        feed.clients -= 1
    return resp


def status_routes() -> list[web.AbstractRouteDef]:
    return [*(web.get(path, static_file) for path in STATIC), web.get("/status/events", status_events)]
