"""Typed application state: the immutable routing snapshot and the long-lived stores."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from gateway.config import Config
from gateway.metrics import GatewayMetrics
from gateway.request import id_factory
from routing.planner import Planner
from routing.topology import Endpoint, Location, Pool, Region, Topology

if TYPE_CHECKING:
    from gateway.auth import Authenticator


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """Everything a request needs from config; swapped atomically on reload.
    In-flight requests keep the snapshot they started with."""

    config: Config
    topology: Topology
    planner: Planner
    models: frozenset[str]
    auth: Authenticator | None = None


class Discoveries(Protocol):
    """What the discovery sources found (gateway.discovery.Discovered)."""

    registered: tuple[bytes, ...]  # raw registry announcements, verified at each build
    registered_at: float  # wall clock of the read that found them
    on_new_topology: list[Callable[[Topology], None]]

    def expand(self, ep: Endpoint, refresh: bool) -> list[Endpoint]: ...


def build_topology(cfg: Config, simulated: Mapping[str, list[str]] | None = None,
                   discovered: Discoveries | None = None) -> Topology:
    """Topology from validated config; ``simulated`` maps pool name -> URLs of local simulators;
    ``discovered`` (a gateway.discovery.Discovered) adds DNS addresses and registered pools."""
    regions = {
        r.name: Region(r.name, Location(r.location.lat, r.location.lon, city=r.location.name),
                       r.jurisdiction, frozenset(r.tags))
        for r in cfg.regions
    }
    pools = []
    for p in cfg.pools:
        eps = [Endpoint(e.id or f"{p.name}-{j}", e.url, p.name, e.weight, e.health_url)
               for j, e in enumerate(p.endpoints)]
        if discovered is not None:
            eps = [x for ep, e in zip(eps, p.endpoints) for x in discovered.expand(ep, e.dns_refresh_s is not None)]
        for j, url in enumerate((simulated or {}).get(p.name, [])):
            eps.append(Endpoint(f"{p.name}-sim{j}", url, p.name))
        pools.append(Pool(p.name, p.region, dict(p.models), tuple(eps), frozenset(p.tags), p.price_per_mtok,
                          p.tier, p.draining, p.max_context, p.can_continue))
    if discovered is not None and discovered.registered:
        from gateway.fleet import registered_pools

        pools += registered_pools(cfg, discovered.registered, discovered.registered_at)[0]
    g = cfg.gateway
    return Topology(regions, tuple(pools), Location(g.location.lat, g.location.lon, city=g.location.name),
                    g.region)


@dataclass(slots=True)
class Runtime:
    """Injected time and randomness (fake in tests): every module of the gateway reads the time
    (``clock``, monotonic seconds; ``wall``, Unix time) and draws random numbers through it."""

    clock: Callable[[], float]
    rng: random.Random
    wall: Callable[[], float] = time.time
    new_id: Callable[[], str] = field(default_factory=id_factory)


SNAPSHOT = web.AppKey("snapshot", object)  # holder: gateway.app.SnapshotHolder
OBSERVATIONS = web.AppKey("observations", object)  # routing.observations.Observations
LOCATOR = web.AppKey("locator", object)  # routing.locate.ClientLocator
METRICS = web.AppKey("metrics", GatewayMetrics)
RUNTIME = web.AppKey("runtime", Runtime)
PROXY = web.AppKey("proxy", object)  # gateway.proxy.Proxy
ACCESS_LOG = web.AppKey("access_log", object)  # gateway.access.AccessLog
SHARED_LIMITS = web.AppKey("shared_limits", object)  # gateway.limits.SharedLimits, or None


class Draining:
    """Set once the gateway is stopping: /readyz answers 503 from then on."""

    def __init__(self) -> None:
        self.since: float | None = None


DRAINING = web.AppKey("draining", Draining)
