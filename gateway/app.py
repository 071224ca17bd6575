"""``build_app(config)``: everything a gateway needs, created here, nothing global."""
from __future__ import annotations

import random
import time
from collections.abc import Mapping

from aiohttp import web

from gateway.background import health_probes, load_scraper
from gateway.config import Config
from gateway.handlers import routes
from gateway.metrics import build_metrics
from gateway.proxy import Proxy
from gateway.state import (LOCATOR, METRICS, OBSERVATIONS, PROXY, RUNTIME, SNAPSHOT, RoutingSnapshot, Runtime,
                           build_topology)
from gateway.upstream_client import UpstreamClient
from routing.breaker import BreakerParams
from routing.budget import RetryBudget
from routing.locate import ClientLocator, open_geoip
from routing.observations import ObservationParams, Observations
from routing.planner import Planner


class SnapshotHolder:
    """Holds the current routing snapshot; ``swap`` replaces it atomically (one reference)."""

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: RoutingSnapshot) -> None:
        self.current = snapshot


def observation_params(cfg: Config) -> ObservationParams:
    return ObservationParams(
        half_life_s=cfg.latency.half_life_s, rise=cfg.health.rise, fall=cfg.health.fall,
        consecutive_failures=cfg.outlier.consecutive_failures, base_ejection_s=cfg.outlier.base_ejection_s,
        max_ejection_s=cfg.outlier.max_ejection_s, max_ejected_percent=cfg.outlier.max_ejected_percent,
        load_stale_s=cfg.load.stale_s,
        breaker=BreakerParams(cfg.breaker.enabled, cfg.breaker.failures, cfg.breaker.open_s,
                              cfg.breaker.max_open_s, cfg.breaker.half_open_probes),
        max_throttle_s=cfg.retry.max_retry_after_s)


def make_snapshot(cfg: Config, observations: Observations, rng: random.Random,
                  simulated: Mapping[str, list[str]] | None = None) -> RoutingSnapshot:
    topology = build_topology(cfg, simulated)
    observations.sync(topology)
    planner = Planner(topology, observations, cfg.routing.params(), rng,
                      policy=cfg.routing.policy, balancer=cfg.routing.balancer)
    return RoutingSnapshot(cfg, topology, planner, topology.models())


def build_app(cfg: Config, *, simulated: Mapping[str, list[str]] | None = None,
              runtime: Runtime | None = None, geoip_reader: object | None = None) -> web.Application:
    """The gateway application.  ``simulated`` adds local simulator URLs to pools;
    ``geoip_reader`` overrides the configured database (tests)."""
    rt = runtime or Runtime(clock=time.monotonic, rng=random.Random())
    metrics = build_metrics()

    def on_transition(endpoint_id: str, kind: str, old: str, new: str) -> None:
        metrics.transitions.labels(endpoint_id, kind, new).inc()

    observations = Observations(observation_params(cfg), rt.clock, on_transition)
    reader = geoip_reader if geoip_reader is not None else open_geoip(cfg.geoip.database)
    g = cfg.gateway
    from routing.topology import Location
    locator = ClientLocator(g.trusted_proxies, reader, Location(g.location.lat, g.location.lon),
                            cfg.geoip.cache_size)
    app = web.Application(client_max_size=g.max_body_bytes + 1024)
    app[RUNTIME] = rt
    app[METRICS] = metrics
    app[OBSERVATIONS] = observations
    app[LOCATOR] = locator
    app[SNAPSHOT] = SnapshotHolder(make_snapshot(cfg, observations, rt.rng, simulated))
    app.cleanup_ctx.append(_upstream_client)
    app.cleanup_ctx.append(health_probes)
    app.cleanup_ctx.append(load_scraper)
    app.add_routes(routes())
    return app


async def _upstream_client(app: web.Application):  # type: ignore[no-untyped-def]
    cfg = app[SNAPSHOT].current.config
    client = UpstreamClient(cfg.timeouts.connect_s)
    b = cfg.budget
    budget = RetryBudget(b.ratio, b.min_per_s, b.window_s, app[RUNTIME].clock)
    app[PROXY] = Proxy(client, app[OBSERVATIONS], app[METRICS], app[RUNTIME], budget)
    yield
    await client.close()
