"""Typed application state: the immutable routing snapshot, the long-lived stores, and every
AppKey of the gateway application (defined here only; the classes they hold are imported for
their types, so this module imports none of the modules that use them)."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from gateway.config import Config, LocationCfg
from gateway.metrics import GatewayMetrics
from gateway.request import id_factory
from routing.planner import Planner
from routing.topology import Endpoint, Location, Pool, Region, Topology

if TYPE_CHECKING:
    from gateway.access import AccessLog
    from gateway.auth import Authenticator
    from gateway.canary import CanaryState
    from gateway.canary_share import CanaryShare
    from gateway.discovery import Discovered
    from gateway.host_link import HostLink
    from gateway.host_share import DrainBook, PeerTraffic
    from gateway.hostlimits import HostLimits
    from gateway.limits import SharedLimits
    from gateway.forward.orchestrator import Orchestrator
    from gateway.registry import RegistryState
    from gateway.snapshot import SnapshotHolder
    from gateway.status import StatusFeed
    from gateway.traffic import Traffic
    from routing.locate import ClientLocator
    from routing.observations import Observations


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


def routing_location(loc: LocationCfg) -> Location:
    """The routing location of a config location (the one place one becomes the other)."""
    return Location(loc.lat, loc.lon, city=loc.name)


def build_topology(cfg: Config, simulated: Mapping[str, list[str]] | None = None,
                   discovered: Discoveries | None = None) -> Topology:
    """Topology from validated config; ``simulated`` maps pool name -> URLs of local simulators;
    ``discovered`` (a gateway.discovery.Discovered) adds DNS addresses and registered pools."""
    regions = {
        r.name: Region(r.name, routing_location(r.location),
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
                          p.tier, p.draining, p.max_context, p.can_continue, prefill=p.prefill))
    if discovered is not None and discovered.registered:
        from gateway.fleet import registered_pools

        pools += registered_pools(cfg, discovered.registered, discovered.registered_at)[0]
    g = cfg.gateway
    return Topology(regions, tuple(pools), routing_location(g.location),
                    g.region)


@dataclass(slots=True)
class Runtime:
    """Injected time and randomness (fake in tests): every module of the gateway reads the time
    (``clock``, monotonic seconds; ``wall``, Unix time) and draws random numbers through it."""

    clock: Callable[[], float]
    rng: random.Random
    wall: Callable[[], float] = time.time
    new_id: Callable[[], str] = field(default_factory=id_factory)


SNAPSHOT: web.AppKey[SnapshotHolder] = web.AppKey("snapshot")
OBSERVATIONS: web.AppKey[Observations] = web.AppKey("observations")
LOCATOR: web.AppKey[ClientLocator] = web.AppKey("locator")
METRICS = web.AppKey("metrics", GatewayMetrics)
RUNTIME = web.AppKey("runtime", Runtime)
PROXY: web.AppKey[Orchestrator] = web.AppKey("proxy")  # the forwarding path's entry
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
# Redis-backed for the fleet (auth.shared), the host's table under --workers, or None (in-process)
SHARED_LIMITS: web.AppKey[SharedLimits | HostLimits | None] = web.AppKey("shared_limits")
TRAFFIC: web.AppKey[Traffic] = web.AppKey("traffic")
STATUS: web.AppKey[StatusFeed] = web.AppKey("status")
DISCOVERED: web.AppKey[Discovered] = web.AppKey("discovered")
REGISTRY: web.AppKey[RegistryState] = web.AppKey("registry")
CANARY: web.AppKey[CanaryState] = web.AppKey("canary")
CANARY_SHARE: web.AppKey[CanaryShare] = web.AppKey("canary_share")
HOST_LINK: web.AppKey[HostLink] = web.AppKey("host_link")  # --workers: this worker's link to the supervisor
DRAIN_BOOK: web.AppKey[DrainBook] = web.AppKey("drain_book")
PEER_TRAFFIC: web.AppKey[PeerTraffic] = web.AppKey("peer_traffic")
MODEL_CARDS: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("model_cards")  # what pools report of our models
CONFIG_PATH = web.AppKey("config_path", Path)  # the file reloads read (absent: no reloads)
SIMULATED: web.AppKey[dict[str, list[str]]] = web.AppKey("simulated")  # pool -> local simulator URLs
# what each config read from the file goes through (infercdn up --engine vllm, launched endpoints)
CONFIG_TRANSFORM: web.AppKey[Callable[[Config], Config]] = web.AppKey("config_transform")
RELOAD_PEERS: web.AppKey[Callable[[], None]] = web.AppKey("reload_peers")  # --workers: the others reload too


class Draining:
    """Set once the gateway is stopping: /readyz answers 503 from then on."""

    def __init__(self) -> None:
        self.since: float | None = None


DRAINING = web.AppKey("draining", Draining)
