"""Background loops, each an aiohttp cleanup context (start a task, yield, cancel, await):
active health + latency probes, and load scraping of vLLM's /metrics."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway.state import METRICS, OBSERVATIONS, SNAPSHOT
from routing.topology import Endpoint

log = logging.getLogger("infercdn.background")

LOAD_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
}


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


async def _every(interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
    while True:
        started = time.monotonic()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one round must not stop the loop
            log.exception("background round failed")
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


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


async def _probe(session: aiohttp.ClientSession, ep: Endpoint, path: str, timeout_s: float) -> tuple[bool, float | None]:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(ep.health_url or ep.url + path) as resp:
                ok = resp.status == 200 and await read_capped(resp, MAX_HEALTH_BYTES) is not None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return False, None
    return ok, (time.monotonic() - t0) * 1000 if ok else None


def _endpoints(app: web.Application) -> list[Endpoint]:
    return list(app[SNAPSHOT].current.topology.endpoints.values())


async def probe_round(app: web.Application, session: aiohttp.ClientSession, warm: set[str]) -> None:
    """One health + latency probe of every endpoint.  The first good answer of an endpoint
    only warms the connection: it includes the TCP handshake and start-up work, so its time
    is not a latency sample (seen here: 60-110 ms for 1 ms paths)."""
    cfg = app[SNAPSHOT].current.config.health
    eps = _endpoints(app)
    results = await asyncio.gather(*(_probe(session, ep, cfg.path, cfg.timeout_s) for ep in eps))
    obs, metrics = app[OBSERVATIONS], app[METRICS]
    for ep, (ok, rtt) in zip(eps, results):
        obs.record_probe(ep.id, ok, rtt if ep.id in warm else None)
        if ok:
            warm.add(ep.id)
        else:
            warm.discard(ep.id)
        view = obs.view(ep.id)
        metrics.endpoint_healthy.labels(ep.pool, ep.id).set(1 if view.healthy else 0)
        metrics.endpoint_ejected.labels(ep.pool, ep.id).set(1 if view.ejected else 0)
        metrics.inflight.labels(ep.id).set(view.inflight)
        if view.latency_ms is not None:
            metrics.endpoint_latency_ms.labels(ep.pool, ep.id).set(view.latency_ms)


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
                        due: dict[str, float]) -> dict[str, float] | None:
    started = time.monotonic()
    load = await _scrape(session, ep, timeout_s)
    took = time.monotonic() - started
    # vLLM renders /metrics on the event loop that streams its tokens: a slow answer means a busy
    # server, and scraping it as often as an idle one held its output back (seen on 2 cores)
    # (capped: load older than stale_s counts as unknown, so the gap stays well under it)
    due[ep.id] = started + min(SCRAPE_SHARE * took, max_gap_s)
    return load


async def scrape_round(app: web.Application, session: aiohttp.ClientSession, due: dict[str, float]) -> None:
    cfg = app[SNAPSHOT].current.config
    now = time.monotonic()
    eps = [ep for ep in _endpoints(app) if due.get(ep.id, 0.0) <= now]
    results = await asyncio.gather(*(_timed_scrape(session, ep, cfg.load.timeout_s, cfg.load.stale_s / 3, due)
                                     for ep in eps))
    obs = app[OBSERVATIONS]
    for ep, load in zip(eps, results):
        if load:  # unknown stays unknown: stale load is never read as idle
            obs.record_load(ep.id, load.get("running"), load.get("waiting"), load.get("kv_usage"))


@contextlib.asynccontextmanager
async def _loop(interval_s: float, step: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        task = asyncio.create_task(_every(interval_s, lambda: step(session)))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def health_probes(app: web.Application) -> AsyncIterator[None]:
    cfg = app[SNAPSHOT].current.config
    warm: set[str] = set()
    async with _loop(cfg.health.interval_s, lambda s: probe_round(app, s, warm)):
        yield


async def load_scraper(app: web.Application) -> AsyncIterator[None]:
    cfg = app[SNAPSHOT].current.config
    if not cfg.load.enabled:
        yield
        return
    due: dict[str, float] = {}
    async with _loop(cfg.load.scrape_interval_s, lambda s: scrape_round(app, s, due)):
        yield
