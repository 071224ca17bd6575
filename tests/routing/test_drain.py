"""Operator drain (of an endpoint, of a pool) and a health check that announces a drain:
the planner never picks a drained endpoint, not even in panic; drains survive a sync (reload)
for what remains and are forgotten with what leaves."""
from __future__ import annotations

import random
from dataclasses import replace

from routing.observations import ObservationParams, Observations
from routing.plan import Plan, RequestContext, RoutingParams
from routing.planner import Planner
from routing.topology import Location, Topology
from tests.routing.helpers import FakeClock, make_topology

LONDON = Location(51.51, -0.13, "GB", "EU", "London", source="geoip")


def _setup(topology: Topology | None = None) -> tuple[Topology, Observations, Planner]:
    topo = topology or make_topology()
    obs = Observations(ObservationParams(), FakeClock())
    obs.sync(topo)
    return topo, obs, Planner(topo, obs, RoutingParams(panic_threshold=0.5), random.Random(1))


def _plan(planner: Planner) -> Plan:
    return planner.plan(RequestContext(model="tiny-chat", client=LONDON))


def _endpoints(plan: Plan) -> list[str]:
    return [c.endpoint.id for c in plan.candidates]


def _rejections(plan: Plan) -> set[tuple[str, str | None, str]]:
    return {(r.pool, r.endpoint, r.reason) for r in plan.rejected}


def test_a_drained_endpoint_gets_no_requests_until_undrained() -> None:
    _, obs, planner = _setup()
    assert _endpoints(_plan(planner))[0].startswith("eu-west")
    assert obs.drain("eu-west-0")
    plan = _plan(planner)
    assert "eu-west-0" not in _endpoints(plan)
    assert ("eu-west-a", "eu-west-0", "draining") in _rejections(plan)
    assert obs.view("eu-west-0").drained and obs.route_inputs("eu-west-0")[0] == "draining"
    assert obs.drain("eu-west-0", drained=False)
    assert "eu-west-0" in _endpoints(_plan(planner))


def test_a_drained_endpoint_is_not_tried_in_panic() -> None:
    _, obs, planner = _setup()
    for eid in ("us-east-0", "us-east-1", "ap-southeast-0", "ap-southeast-1", "eu-west-1"):
        obs.record_probe(eid, False)  # 1 of 6 healthy: panic
    obs.drain("eu-west-0")
    plan = _plan(planner)
    assert plan.panic
    ids = _endpoints(plan)
    assert "eu-west-1" in ids and "us-east-0" in ids  # unhealthy ones are tried in panic
    assert "eu-west-0" not in ids


def test_draining_wins_over_other_reasons() -> None:
    _, obs, _ = _setup()
    obs.record_probe("eu-west-0", False)
    assert obs.route_inputs("eu-west-0")[0] == "unhealthy"
    obs.drain("eu-west-0")
    assert obs.route_inputs("eu-west-0")[0] == "draining"


def test_a_drained_pool_is_left_out_and_undrained() -> None:
    _, obs, planner = _setup()
    assert obs.drain_pool("eu-west-a")
    plan = _plan(planner)
    assert not [e for e in _endpoints(plan) if e.startswith("eu-west")]
    assert ("eu-west-a", None, "draining") in _rejections(plan)
    assert obs.drained_pools == frozenset({"eu-west-a"})
    assert obs.drain_pool("eu-west-a", drained=False)
    assert _endpoints(_plan(planner))[0].startswith("eu-west")


def test_unknown_names_are_refused_and_change_nothing() -> None:
    _, obs, _ = _setup()
    assert not obs.drain("nowhere-0")
    assert not obs.drain_pool("nowhere-a")
    assert obs.drained_pools == frozenset()


def test_drains_survive_a_sync_for_what_remains_and_end_with_what_leaves() -> None:
    topo, obs, _ = _setup()
    obs.drain("eu-west-0")
    obs.drain_pool("us-east-a")
    obs.sync(topo)  # a reload that keeps everything
    assert obs.view("eu-west-0").drained and obs.drained_pools == frozenset({"us-east-a"})

    eu = topo.pool("eu-west-a")
    smaller = replace(topo, pools=tuple(p for p in topo.pools if p.name != "us-east-a" and p is not eu)
                      + (replace(eu, endpoints=eu.endpoints[1:]),), endpoints={})
    obs.sync(smaller)  # eu-west-0 and the pool us-east-a left the config
    assert obs.drained_pools == frozenset()
    obs.sync(topo)  # and came back: as new, not drained
    assert not obs.view("eu-west-0").drained and obs.drained_pools == frozenset()
    assert "eu-west-0" in _endpoints(_plan(Planner(topo, obs, RoutingParams(), random.Random(1))))


def test_a_health_check_that_answers_draining_stops_new_requests_at_once() -> None:
    _, obs, planner = _setup()
    obs.record_probe("eu-west-0", False, draining=True)
    assert obs.route_inputs("eu-west-0")[0] == "draining"
    assert obs.view("eu-west-0").probe_draining and not obs.view("eu-west-0").drained
    assert "eu-west-0" not in _endpoints(_plan(planner))
    obs.record_probe("eu-west-0", True)  # the launcher is back
    obs.record_probe("eu-west-0", True)
    assert not obs.view("eu-west-0").probe_draining
    assert "eu-west-0" in _endpoints(_plan(planner))
