"""Background loops, each an aiohttp cleanup context (start a task, yield, cancel, await):
active health + latency probes, and load scraping of vLLM's /metrics.  Under --workers one
process per host runs them and publishes each round; the others only apply what arrives."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from gateway.state import HOST_LINK, METRICS, OBSERVATIONS, RUNTIME, SNAPSHOT
from routing.topology import Endpoint

log = logging.getLogger("infercdn.background")

ProbeRow = tuple[str, bool, "float | None", bool]  # endpoint id, answered 200, latency sample (ms) or None, "draining"
LoadRow = tuple[str, "float | None", "float | None", "float | None"]  # endpoint id, running, waiting, kv usage

LOAD_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
}
DRAINING_BODY = b"draining"  # a 503 with this body: the endpoint announces a drain (vLLM launcher)


def parse_vllm_load(text: str) -> dict[str, float]:
    """Sum vLLM's load gauges over label sets (one server may serve several model names)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        cut = [i for i in (line.find("{"), line.find(" ")) if i >= 0]
        key = LOAD_GAUGES.get(line[: min(cut)] if cut else line)
        if key is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        out[key] = out.get(key, 0.0) + value
    return out


async def _every(interval_s: float, step: Callable[[], Awaitable[None]], name: str,
                 clock: Callable[[], float]) -> None:
    me = asyncio.current_task()
    while True:
        started = clock()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one round must not stop the loop
            log.exception("%s round failed", name)
        if me is not None and me.cancelling():  # a client library swallowed our cancellation (redis-py can)
            raise asyncio.CancelledError
        await asyncio.sleep(max(0.0, interval_s - (clock() - started)))


@contextlib.asynccontextmanager
async def every(interval_s: float, step: Callable[[], Awaitable[None]], name: str, *,
                clock: Callable[[], float]) -> AsyncIterator[None]:
    """Run ``step`` every ``interval_s`` seconds (of ``clock``, the runtime's) in a task while the block runs."""
    async with running(_every(interval_s, step, name, clock)):
        yield


MAX_HEALTH_BYTES = 64 * 1024  # what a pool's /health answer may be (docs/security.md)
MAX_METRICS_BYTES = 4 * 1024 * 1024  # and its /metrics (vLLM's: ~100 KB)


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, read as it arrives; None (a failed probe or scrape) past ``limit`` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    parts, size = [], 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def probe(session: aiohttp.ClientSession, ep: Endpoint, path: str, timeout_s: float,
                clock: Callable[[], float], drains: set[str] | None = None) -> tuple[bool, float | None]:
    """(healthy, round trip in ms); an endpoint that answered "draining" is added to ``drains``."""
    t0 = clock()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(ep.health_url or ep.url + path) as resp:
                body = await read_capped(resp, MAX_HEALTH_BYTES)
                ok = resp.status == 200 and body is not None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return False, None
    if drains is not None and resp.status == 503 and body is not None and body.strip() == DRAINING_BODY:
        drains.add(ep.id)
    return ok, (clock() - t0) * 1000 if ok else None


def _endpoints(app: web.Application) -> list[Endpoint]:
    return list(app[SNAPSHOT].current.topology.endpoints.values())


async def probe_round(app: web.Application, session: aiohttp.ClientSession, warm: set[str]) -> None:
    """One health + latency probe of every endpoint.  The first good answer of an endpoint
    only warms the connection: it includes the TCP handshake and start-up work, so its time
    is not a latency sample (seen here: 60-110 ms for 1 ms paths)."""
    cfg = app[SNAPSHOT].current.config.health
    eps = _endpoints(app)
    drains: set[str] = set()
    clock = app[RUNTIME].clock
    results = await asyncio.gather(*(probe(session, ep, cfg.path, cfg.timeout_s, clock, drains) for ep in eps))
    rows: list[ProbeRow] = []
    for ep, (ok, rtt) in zip(eps, results):
        rows.append((ep.id, ok, rtt if ep.id in warm else None, ep.id in drains))
        if ok:
            warm.add(ep.id)
        else:
            warm.discard(ep.id)
    apply_probes(app, rows)
    link = app.get(HOST_LINK)
    if link is not None:
        link.publish("probes", rows=rows)


def apply_probes(app: web.Application, rows: list[ProbeRow]) -> None:
    """Record one probe round (this process's, or the host prober's under --workers)."""
    obs, metrics = app[OBSERVATIONS], app[METRICS]
    known = app[SNAPSHOT].current.topology.endpoints
    for eid, ok, rtt, draining in rows:
        ep = known.get(eid)
        if ep is None:  # not (or no longer) in this process's routing snapshot
            continue
        obs.record_probe(eid, ok, rtt, draining)
        view = obs.view(eid)
        metrics.endpoint_healthy.labels(ep.pool, eid).set(1 if view.healthy else 0)
        metrics.endpoint_ejected.labels(ep.pool, eid).set(1 if view.ejected else 0)
        drained = view.drained or view.probe_draining or ep.pool in obs.drained_pools
        metrics.endpoint_drained.labels(ep.pool, eid).set(1 if drained else 0)
        metrics.inflight.labels(eid).set(view.inflight)
        if view.latency_ms is not None:
            metrics.endpoint_latency_ms.labels(ep.pool, eid).set(view.latency_ms)
    count_healthy_by_region(app)


def count_healthy_by_region(app: web.Application) -> None:
    """infercdn_region_healthy_endpoints: every region with a pool, 0 when none is usable."""
    topology, obs, metrics = app[SNAPSHOT].current.topology, app[OBSERVATIONS], app[METRICS]
    gauge = metrics.region_healthy
    counts = {pool.region: 0 for pool in topology.pools}
    for pool in topology.pools:
        for ep in pool.endpoints:
            view = obs.view(ep.id)
            counts[pool.region] += int(view.healthy and not view.ejected and not pool.draining)
    if metrics.multiprocess_dir is None:  # prometheus-client cannot clear under --workers: a region
        gauge.clear()                     # that left the config keeps its last value until a restart
    for region, n in counts.items():
        gauge.labels(region).set(n)


def apply_loads(app: web.Application, rows: list[LoadRow]) -> None:
    """Record scraped pool load (unknown stays unknown: stale load is never read as idle)."""
    obs = app[OBSERVATIONS]
    for eid, running, waiting, kv_usage in rows:
        obs.record_load(eid, _count(running), _count(waiting), kv_usage)


def _count(value: float | None) -> int | None:
    """A request count scraped as a Prometheus gauge (a float) as the routing core's int; a value
    that is no count (NaN, infinite) tells nothing."""
    return round(value) if value is not None and math.isfinite(value) else None


async def _scrape(session: aiohttp.ClientSession, ep: Endpoint, timeout_s: float) -> dict[str, float] | None:
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(ep.url + "/metrics") as resp:
                body = await read_capped(resp, MAX_METRICS_BYTES) if resp.status == 200 else None
                return parse_vllm_load(body.decode()) if body is not None else None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, UnicodeDecodeError):
        return None


SCRAPE_SHARE = 10.0  # an endpoint's /metrics is asked at most once per 10× its last answer time


async def _timed_scrape(session: aiohttp.ClientSession, ep: Endpoint, timeout_s: float, max_gap_s: float,
                        due: dict[str, float], clock: Callable[[], float]) -> dict[str, float] | None:
    started = clock()
    load = await _scrape(session, ep, timeout_s)
    took = clock() - started
    # vLLM renders /metrics on the event loop that streams its tokens: a slow answer means a busy
    # server, and scraping it as often as an idle one held its output back (seen on 2 cores)
    # (capped: load older than stale_s counts as unknown, so the gap stays well under it)
    due[ep.id] = started + min(SCRAPE_SHARE * took, max_gap_s)
    return load


async def scrape_round(app: web.Application, session: aiohttp.ClientSession, due: dict[str, float]) -> None:
    cfg = app[SNAPSHOT].current.config
    clock = app[RUNTIME].clock
    now = clock()
    eps = [ep for ep in _endpoints(app) if due.get(ep.id, 0.0) <= now]
    results = await asyncio.gather(*(_timed_scrape(session, ep, cfg.load.timeout_s, cfg.load.stale_s / 3, due, clock)
                                     for ep in eps))
    rows: list[LoadRow] = [(ep.id, load.get("running"), load.get("waiting"), load.get("kv_usage"))
                           for ep, load in zip(eps, results) if load]
    apply_loads(app, rows)
    link = app.get(HOST_LINK)
    if link is not None and rows:
        link.publish("loads", rows=rows)


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """``work`` as a task while the block runs; cancelled and awaited when it ends."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _loop(app: web.Application, interval_s: float, step: Callable[[aiohttp.ClientSession], Awaitable[None]],
                name: str) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as session, \
            every(interval_s, lambda: step(session), name, clock=app[RUNTIME].clock):
        yield


def _rows(msg: dict[str, Any]) -> list[Any]:
    return [tuple(r) for r in msg["rows"]]


def _shared(app: web.Application, kind: str, apply: Callable[[web.Application, list[Any]], None]) -> bool:
    """Under --workers only worker 0 probes and scrapes for the host; every worker applies the
    rounds the link brings (the prober's, or the last one replayed to a restarted prober), so
    pools see one prober per host, not one per worker.  True: this process only follows."""
    link = app.get(HOST_LINK)
    if link is None:
        return False
    link.on(kind, lambda msg: apply(app, _rows(msg)))
    return not link.prober


async def health_probes(app: web.Application) -> AsyncIterator[None]:
    cfg = app[SNAPSHOT].current.config
    if _shared(app, "probes", apply_probes):
        yield
        return
    warm: set[str] = set()
    async with _loop(app, cfg.health.interval_s, lambda s: probe_round(app, s, warm), "health probe"):
        yield


async def load_scraper(app: web.Application) -> AsyncIterator[None]:
    cfg = app[SNAPSHOT].current.config
    if _shared(app, "loads", apply_loads) or not cfg.load.enabled:
        yield
        return
    due: dict[str, float] = {}
    async with _loop(app, cfg.load.scrape_interval_s, lambda s: scrape_round(app, s, due), "load scrape"):
        yield
