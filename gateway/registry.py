"""The registry source: reads the announcements of self-registered workers from Redis every
``registry.poll_s`` and hands them to discovery (``gateway/discovery.py``), which rebuilds the
topology when the fleet that counts (``gateway/fleet.py``) changed.

Under ``--workers N`` only the host's prober (worker 0) reads Redis; it hands each read to the
other workers over the host link, and they absorb it as their own, so every worker builds the
same registered pools with the same endpoint ids.

Redis down or slow: the last fleet read stays (its leases are judged against the time of that
read, not the time now), the failure is counted (``infercdn_discovery_errors_total{source=
"registry"}``) and logged once a minute."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.config import RegistryCfg
from gateway.background import every
from gateway.discovery import refresh
from gateway.fleet import Refusal, registered_pools
from gateway.state import DISCOVERED, HOST_LINK, METRICS, REGISTRY, RUNTIME, SNAPSHOT
from routing.announce import KEY_PART
from routing.topology import Pool

log = logging.getLogger("infercdn.registry")


@dataclass
class RegistryState:
    """What the last reads found, for GET /admin/registry and the logs."""

    pools: list[Pool] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    last_read: float | None = None  # wall clock of the last successful read
    errors: int = 0
    last_error: str | None = None
    last_warning: float = float("-inf")

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "pools": [{"name": p.name, "provider": p.provider, "region": p.region, "models": sorted(p.models),
                       "price_per_mtok": p.price_per_mtok, "tags": sorted(p.tags), "max_context": p.max_context,
                       "endpoints": [{"id": e.id, "url": e.url, "health_url": e.health_url} for e in p.endpoints]}
                      for p in self.pools],
            "refused": [{"provider": r.provider, "endpoint": r.endpoint, "reason": r.reason} for r in self.refused],
            "last_read_s_ago": None if self.last_read is None else round(now - self.last_read, 3),
            "errors": self.errors, "last_error": self.last_error,
        }


async def read(client: Any, cfg: RegistryCfg) -> tuple[bytes, ...]:
    """Every announcement stored under the prefix (SCAN + MGET; expired keys are gone already)."""
    keys = [k async for k in client.scan_iter(match=f"{cfg.key_prefix}{KEY_PART}*", count=500)]
    if not keys:
        return ()
    values = await client.mget(sorted(keys))
    return tuple(v for v in values if v is not None)


async def poll(app: web.Application, client: Any, state: RegistryState, wall: Callable[[], float]) -> None:
    cfg = app[SNAPSHOT].current.config
    reg = cfg.registry
    if reg is None:  # removed by a reload: its pools went with it (nothing verifies any more)
        return
    try:
        async with asyncio.timeout(reg.timeout_s):
            raws = await read(client, reg)
    except Exception as exc:  # noqa: BLE001 - any Redis trouble: keep the last fleet
        _failed(app, state, exc)
        _share(app, state)
        return
    absorb(app, state, raws, wall())
    _share(app, state)


def absorb(app: web.Application, state: RegistryState, raws: tuple[bytes, ...], now: float) -> None:
    """One read of the registry (made here, or by the host's prober under --workers) at wall
    clock ``now``: discovery gets it; the topology is rebuilt when the fleet that counts changed."""
    cfg = app[SNAPSHOT].current.config
    if cfg.registry is None:
        return
    found = app[DISCOVERED]
    found.registered, found.registered_at = raws, now
    state.last_read = now
    pools, refused = registered_pools(cfg, raws, now)
    new_refusals = [r for r in refused if r not in state.refused]
    for r in new_refusals:
        log.warning("registry: refused %s/%s: %s", r.provider or "?", r.endpoint or "?", r.reason)
    state.refused = refused
    if pools != state.pools:
        before = {e.id for p in state.pools for e in p.endpoints}
        after = {e.id for p in pools for e in p.endpoints}
        state.pools = pools
        refresh(app, f"registry: +{len(after - before)} -{len(before - after)} endpoints")
        _gauges(app, pools, refused)
    elif new_refusals:
        _gauges(app, pools, refused)


def _share(app: web.Application, state: RegistryState) -> None:
    """Under --workers the prober's every read goes to the other workers (the whole read: a
    worker that starts later gets it from the replay)."""
    link = app.get(HOST_LINK)
    if link is None:
        return
    found = app[DISCOVERED]
    link.publish("registry", raws=[base64.b64encode(r).decode() for r in found.registered],
                 at=found.registered_at if state.last_read is not None else None,
                 errors=state.errors, last_error=state.last_error)


def _follow(app: web.Application, state: RegistryState, msg: dict[str, Any]) -> None:
    """A read of the host's prober (or the last one, replayed to a worker that starts)."""
    state.errors, state.last_error = int(msg["errors"]), msg["last_error"]
    if msg["at"] is not None:
        absorb(app, state, tuple(base64.b64decode(r) for r in msg["raws"]), float(msg["at"]))


def _gauges(app: web.Application, pools: list[Pool], refused: list[Refusal]) -> None:
    m = app[METRICS]
    per_provider: dict[str, int] = {p.name: 0 for p in app[SNAPSHOT].current.config.registry.providers}  # type: ignore[union-attr]
    for pool in pools:
        per_provider[pool.provider or "?"] = per_provider.get(pool.provider or "?", 0) + len(pool.endpoints)
    for name, n in per_provider.items():
        m.registry_endpoints.labels(name).set(n)
    reasons: dict[str, int] = {}
    for r in refused:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    for reason in ("malformed", "unknown_provider", "revoked", "bad_signature", "expired", "unknown_region",
                   "jurisdiction", "name_taken"):
        m.registry_refused.labels(reason).set(reasons.get(reason, 0))


def _failed(app: web.Application, state: RegistryState, exc: BaseException) -> None:
    state.errors += 1
    state.last_error = f"{type(exc).__name__}: {exc or 'timeout'}"
    app[METRICS].discovery_errors.labels("registry").inc()
    now = app[RUNTIME].clock()
    if now - state.last_warning >= 60.0:
        state.last_warning = now
        n = sum(len(p.endpoints) for p in state.pools)
        log.warning("registry unavailable (%s); keeping the last fleet seen (%d endpoints)", state.last_error, n)


def registry_watcher() -> Callable[[web.Application], AsyncIterator[None]]:
    """The registry source as a cleanup context (nothing without ``registry`` in the config)."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[REGISTRY] = RegistryState()
        reg = app[SNAPSHOT].current.config.registry
        link = app.get(HOST_LINK)
        if link is not None:  # --workers: one reader per host, the prober; every worker follows its reads
            link.on("registry", lambda msg: _follow(app, state, msg))
        if reg is None or (link is not None and not link.prober):
            yield
            return
        import redis.asyncio as aioredis  # only gateways with a registry need it

        client = aioredis.Redis.from_url(reg.redis_url, socket_timeout=reg.timeout_s,
                                         socket_connect_timeout=reg.timeout_s)

        try:
            rt = app[RUNTIME]
            async with every(reg.poll_s, lambda: poll(app, client, state, rt.wall), "registry", clock=rt.clock):
                yield
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
    return ctx
