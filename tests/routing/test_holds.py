"""Holds (quarantine, a pending canary), registered pools' tags and per-request policies in the planner."""
from __future__ import annotations

import random
from dataclasses import replace

from routing.observations import ObservationParams, Observations
from routing.plan import Rejection, RequestContext, RoutingParams
from routing.planner import Planner
from routing.topology import Topology
from tests.routing.helpers import FRANKFURT

PARAMS = RoutingParams()


def plan_for(topology: Topology, obs: Observations, **ctx: object):  # type: ignore[no-untyped-def]
    return Planner(topology, obs, PARAMS, random.Random(0)).plan(RequestContext(model="tiny-chat", **ctx))  # type: ignore[arg-type]


def fresh(clock, topology: Topology) -> Observations:  # type: ignore[no-untyped-def]
    obs = Observations(ObservationParams(rise=1, fall=1), clock)
    obs.sync(topology)
    return obs


def test_a_held_endpoint_gets_nothing_even_in_panic(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = fresh(clock, topology)
    obs.hold("eu-west-0", "quarantined")
    obs.hold("eu-west-1", "canary_pending")
    for eid in ("us-east-0", "us-east-1", "ap-southeast-0"):
        obs.record_probe(eid, False)  # 1 of 6 eligible: panic
    plan = plan_for(topology, obs, client=FRANKFURT)
    assert plan.panic
    ids = [c.endpoint.id for c in plan.candidates]
    assert ids[0] == "ap-southeast-1" and not {"eu-west-0", "eu-west-1"} & set(ids)
    assert Rejection("eu-west-a", None, "unhealthy_or_ejected") in plan.rejected


def test_holds_survive_sync_and_lift(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = fresh(clock, topology)
    obs.hold("eu-west-0", "quarantined")
    obs.sync(Topology(topology.regions, topology.pools[:1], FRANKFURT))  # eu-west leaves ...
    obs.sync(topology)  # ... and comes back
    assert obs.route_inputs("eu-west-0")[0] == "quarantined" and obs.snapshot()["eu-west-0"]["hold"] == "quarantined"
    assert obs.unhold("eu-west-0") == "quarantined" and obs.route_inputs("eu-west-0")[0] is None


def test_a_registered_pool_does_not_inherit_its_regions_tags(clock, topology) -> None:  # type: ignore[no-untyped-def]
    pools = tuple(replace(p, tags=frozenset(), region_tags=False) if p.region == "eu-west" else p
                  for p in topology.pools)
    topo = Topology(topology.regions, pools, FRANKFURT)
    plan = plan_for(topo, fresh(clock, topo), client=FRANKFURT, required_tags=frozenset({"gdpr"}))
    assert plan.candidates == () and Rejection("eu-west-a", None, "tags") in plan.rejected
    plan = plan_for(topology, fresh(clock, topology), client=FRANKFURT, required_tags=frozenset({"gdpr"}))
    assert {c.region for c in plan.candidates} == {"eu-west"}  # a configured pool does


def test_a_request_may_choose_the_cost_policy_and_its_slack(clock, topology) -> None:  # type: ignore[no-untyped-def]
    prices = {"us-east": 0.2, "eu-west": 3.0, "ap-southeast": 0.1}
    topo = Topology(topology.regions, tuple(replace(p, price_per_mtok=prices[p.region]) for p in topology.pools),
                    FRANKFURT)
    obs = fresh(clock, topo)
    nearest = plan_for(topo, obs, client=FRANKFURT)
    assert nearest.policy == "geo_latency" and nearest.candidates[0].region == "eu-west"
    within_us = plan_for(topo, obs, client=FRANKFURT, policy="cost", cost_slack_ms=80.0)  # us ~65 ms farther
    assert within_us.policy == "cost" and [c.region for c in within_us.candidates][::2] == \
        ["us-east", "eu-west", "ap-southeast"]
    anywhere = plan_for(topo, obs, client=FRANKFURT, policy="cost", cost_slack_ms=1000.0)
    assert anywhere.candidates[0].region == "ap-southeast"
