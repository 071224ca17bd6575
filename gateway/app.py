"""``build_app(config)``: everything a gateway needs, created here, nothing global."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web

from gateway.access import AccessLog, flusher
from gateway.background import health_probes, load_scraper
from gateway.canary import canary_loop
from gateway.config import Config
from gateway.discovery import Discovered, Resolver, dns_watcher
from gateway.fleet_admin import fleet_routes
from gateway.edge import server_header
from gateway.handlers import admin_guard, routes
from gateway.limits import SharedLimits
from gateway.metrics import build_metrics
from gateway.model_cards import model_cards
from gateway.forward.orchestrator import Orchestrator
from gateway.forward.parts import Parts
from gateway.registry import registry_watcher
from gateway.quota import add_quota_headers
from gateway.snapshot import SnapshotHolder, make_snapshot, observation_params
from gateway.status import StatusFeed
from gateway.traffic import Traffic
from gateway.state import (ACCESS_LOG, CONFIG_PATH, CONFIG_TRANSFORM, DISCOVERED, DRAINING, LOCATOR, METRICS,
                           OBSERVATIONS, PROXY, RUNTIME, SHARED_LIMITS, SIMULATED, SNAPSHOT, STATUS, TRAFFIC, Draining,
                           Runtime, routing_location)
from gateway.forward.dialer import Dialer
from gateway.forward.ledger import Ledger
from routing.budget import RetryBudget
from routing.locate import ClientLocator, geoip_build_time, open_geoip
from routing.observations import Observations


def build_app(cfg: Config, *, simulated: Mapping[str, list[str]] | None = None,
              runtime: Runtime | None = None, geoip_reader: object | None = None,
              config_path: str | Path | None = None,
              config_transform: Callable[[Config], Config] | None = None,
              resolver: Resolver | None = None) -> web.Application:
    """The gateway application.  ``simulated`` adds local simulator URLs to pools;
    ``geoip_reader`` overrides the configured database (tests); ``config_path`` enables reloads,
    each config read from it passed through ``config_transform``; ``resolver`` answers the DNS
    look-ups of ``dns_refresh_s`` endpoints (default: the system's)."""
    rt = runtime or Runtime(clock=time.monotonic, rng=random.Random())
    metrics = build_metrics()

    def on_transition(endpoint_id: str, kind: str, old: str, new: str) -> None:
        metrics.transitions.labels(endpoint_id, kind, new).inc()

    observations = Observations(observation_params(cfg), rt.clock, on_transition)
    reader = geoip_reader if geoip_reader is not None else open_geoip(cfg.geoip.database)
    g = cfg.gateway
    locator = ClientLocator(g.trusted_proxies, reader, routing_location(g.location),
                            cfg.geoip.cache_size)
    traffic = Traffic(rt.clock)
    app = web.Application(client_max_size=g.max_body_bytes + 1024,
                          middlewares=[admin_guard])
    app[TRAFFIC] = traffic
    app[STATUS] = StatusFeed(traffic, rt.clock)
    if config_path is not None:
        app[CONFIG_PATH] = Path(config_path)
    if config_transform is not None:
        app[CONFIG_TRANSFORM] = config_transform
    app[SIMULATED] = dict(simulated or {})
    app[RUNTIME] = rt
    app[DRAINING] = Draining()
    app[METRICS] = metrics
    app[OBSERVATIONS] = observations
    app[LOCATOR] = locator
    discovered = app[DISCOVERED] = Discovered()
    app[SNAPSHOT] = SnapshotHolder(make_snapshot(cfg, observations, rt, simulated, discovered=discovered))
    access = AccessLog(g.access_log)
    app[ACCESS_LOG] = access
    app.cleanup_ctx.append(lambda a: flusher(a, access))
    app.cleanup_ctx.append(_shared_limits)
    app.cleanup_ctx.append(_upstream_client)
    app.cleanup_ctx.append(health_probes)
    app.cleanup_ctx.append(load_scraper)
    app.cleanup_ctx.append(canary_loop(rt.clock))  # before the sources: it holds what they add
    app.cleanup_ctx.append(dns_watcher(resolver))
    app.cleanup_ctx.append(registry_watcher())
    app.cleanup_ctx.append(model_cards)  # what pools report of their models, for /v1/models
    app.add_routes(fleet_routes())
    app.on_response_prepare.append(add_quota_headers)  # x-ratelimit-* on every answer
    built = geoip_build_time(reader)
    if built is not None:  # alert on an old database (deploy/prometheus/alerts.yaml)
        metrics.geoip_build.set(built)
    app.on_response_prepare.append(server_header)
    app.add_routes(routes())
    return app


async def _shared_limits(app: web.Application):  # type: ignore[no-untyped-def]
    cfg = app[SNAPSHOT].current.config
    shared = cfg.auth.shared
    limits = None
    if shared is not None:
        lease = shared.lease_s or max([m.total_deadline_s for m in cfg.models.values()] or [600.0]) + 30.0
        limits = SharedLimits(shared.redis_url, shared.key_prefix, shared.timeout_ms / 1000, lease,
                              app[RUNTIME].clock, on_error=app[METRICS].shared_limit_errors.inc)
        limits.connect()
    app[SHARED_LIMITS] = limits
    yield
    if limits is not None:
        await limits.close()


async def _upstream_client(app: web.Application):  # type: ignore[no-untyped-def]
    cfg = app[SNAPSHOT].current.config
    rt, obs, metrics = app[RUNTIME], app[OBSERVATIONS], app[METRICS]
    dialer = Dialer(cfg.timeouts.connect_s, obs, rt.clock)
    b = cfg.budget
    budget = RetryBudget(b.ratio, b.min_per_s, b.window_s, rt.clock)
    app[PROXY] = Orchestrator(Parts(dialer, Ledger(obs, metrics, budget, rt.clock, rt.wall), obs, rt))
    yield
    await dialer.close()
