"""The routing snapshot: topology and planner built from a validated config."""
from __future__ import annotations

from collections.abc import Mapping

from gateway.auth import Authenticator
from gateway.config import Config
from gateway.state import Discoveries, RoutingSnapshot, Runtime, build_topology
from routing.breaker import BreakerParams
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


def make_snapshot(cfg: Config, observations: Observations, runtime: Runtime,
                  simulated: Mapping[str, list[str]] | None = None,
                  previous: RoutingSnapshot | None = None, discovered: Discoveries | None = None) -> RoutingSnapshot:
    """``runtime``: the clock and randomness of the planner and the authenticator; ``discovered``
    (gateway.discovery.Discovered): DNS addresses and registered pools to add; its hooks see the
    new topology before anyone routes on it."""
    topology = build_topology(cfg, simulated, discovered)
    observations.set_params(observation_params(cfg))  # a reload's outlier/breaker/latency settings
    observations.sync(topology)
    for hook in discovered.on_new_topology if discovered is not None else ():
        hook(topology)
    planner = Planner(topology, observations, cfg.routing.params(), runtime.rng,
                      policy=cfg.routing.policy, balancer=cfg.routing.balancer)
    auth = Authenticator.build(cfg.auth, runtime.clock, previous.auth if previous else None)
    return RoutingSnapshot(cfg, topology, planner, topology.models(), auth)
