from __future__ import annotations

import json
import random

import pytest

from routing.breaker import BreakerParams
from routing.geo import geo_ms
from routing.observations import ObservationParams, Observations
from routing.outcome import Outcome
from routing.plan import Plan, Rejection, RequestContext, RoutingParams
from routing.planner import Planner
from routing.topology import Location, Topology
from tests.routing.helpers import FRANKFURT, SINGAPORE, VIRGINIA, make_topology

SG_CLIENT = Location(1.29, 103.85, "SG", "AS", "Singapore", source="geoip")
LONDON_CLIENT = Location(51.51, -0.13, "GB", "EU", "London", source="geoip")
US_CLIENT = Location(37.75, -97.82, "US", "NA", None, source="geoip")
PARAMS = RoutingParams()


@pytest.fixture
def obs(clock, topology) -> Observations:  # type: ignore[no-untyped-def]
    o = Observations(ObservationParams(consecutive_failures=3, load_stale_s=10.0), clock)
    o.sync(topology)
    return o


def planner(topology: Topology, obs: Observations, params: RoutingParams = PARAMS, **kw: str) -> Planner:
    return Planner(topology, obs, params, random.Random(1), **kw)


def ctx(client: Location = LONDON_CLIENT, **kw) -> RequestContext:  # type: ignore[no-untyped-def]
    return RequestContext(model="tiny-chat", client=client, **kw)


def regions(plan: Plan) -> list[str]:
    """Region order, one entry per pool visited."""
    out: list[str] = []
    for c in plan.candidates:
        if not out or out[-1] != c.region:
            out.append(c.region)
    return out


def kill(obs: Observations, *endpoint_ids: str) -> None:
    for eid in endpoint_ids:
        obs.record_probe(eid, False)


@pytest.mark.parametrize("client, expected", [
    (SG_CLIENT, ["ap-southeast", "eu-west", "us-east"]),
    (LONDON_CLIENT, ["eu-west", "us-east", "ap-southeast"]),
    (US_CLIENT, ["us-east", "eu-west", "ap-southeast"]),
])
def test_nearest_region_first(topology, obs, client, expected) -> None:  # type: ignore[no-untyped-def]
    plan = planner(topology, obs).plan(ctx(client))
    assert regions(plan) == expected
    assert len(plan.candidates) == 6 and not plan.panic and plan.policy == "geo_latency"
    assert plan.candidates[0].upstream_model == f"tiny-{expected[0]}"
    first = plan.candidates[0].components
    assert first.geo_ms == pytest.approx(geo_ms(client, topology.regions[expected[0]].location, PARAMS))
    assert (first.excess_ms, first.queue_ms, first.penalty_ms) == (0.0, 0.0, 0.0)
    assert [c.score_ms for c in plan.candidates] == sorted(c.score_ms for c in plan.candidates)


def test_unhealthy_pool_skipped_with_reason(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, "ap-southeast-0", "ap-southeast-1")
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert regions(plan) == ["eu-west", "us-east"]
    assert Rejection("ap-southeast-a", None, "unhealthy") in plan.rejected
    assert not plan.panic  # 4 of 6 still eligible


def test_ejected_endpoint_rejected_but_pool_stays(topology, obs) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        obs.record_outcome("ap-southeast-1", Outcome.HTTP_5XX)
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert plan.candidates[0].endpoint.id == "ap-southeast-0" and plan.candidates[1].region == "eu-west"
    assert Rejection("ap-southeast-a", "ap-southeast-1", "ejected") in plan.rejected
    assert "ap-southeast-1" not in {c.endpoint.id for c in plan.candidates}


def test_pool_with_mixed_reasons(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, "ap-southeast-0")
    for _ in range(3):
        obs.record_outcome("ap-southeast-1", Outcome.CONNECT_ERROR)
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert Rejection("ap-southeast-a", None, "unhealthy_or_ejected") in plan.rejected
    assert regions(plan) == ["eu-west", "us-east"]


def test_panic_tries_everything_eligible_first(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, "ap-southeast-0", "ap-southeast-1", "eu-west-0", "eu-west-1")
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert plan.panic
    ids = [c.endpoint.id for c in plan.candidates]
    assert len(ids) == 6 and set(ids[:2]) == {"us-east-0", "us-east-1"}
    assert regions(plan) == ["us-east", "ap-southeast", "eu-west"]  # the rest still by score
    assert any("panic" in n and "2 of 6" in n for n in plan.notes)
    assert Rejection("eu-west-a", None, "unhealthy") in plan.rejected  # the record stays


def test_panic_when_nothing_is_eligible(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, *topology.endpoints)
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert plan.panic and regions(plan) == ["ap-southeast", "eu-west", "us-east"]


def test_no_panic_when_threshold_is_zero(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, *topology.endpoints)
    plan = planner(topology, obs, RoutingParams(panic_threshold=0.0)).plan(ctx(SG_CLIENT))
    assert not plan.panic and plan.candidates == ()
    assert any("no eligible endpoint" in n for n in plan.notes)


def test_measured_excess_latency_reorders(topology, obs) -> None:  # type: ignore[no-untyped-def]
    # the gateway sits in Frankfurt: eu-west's prior is ~5 ms; a measured 250 ms is congestion
    for eid in ("eu-west-0", "eu-west-1"):
        obs.record_probe(eid, True, 250.0)
    us_prior = geo_ms(FRANKFURT, VIRGINIA, PARAMS)
    for eid in ("us-east-0", "us-east-1"):
        obs.record_probe(eid, True, us_prior - 10.0)  # faster than the prior: no bonus, no penalty
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    assert regions(plan)[0] == "us-east"
    eu = next(c for c in plan.candidates if c.region == "eu-west")
    assert eu.components.excess_ms == pytest.approx(250.0 - PARAMS.geo_base_ms)
    assert plan.candidates[0].components.excess_ms == 0.0


def test_only_known_latencies_are_averaged(topology, obs) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("eu-west-0", True, 105.0)  # eu-west-1 never measured
    obs.record_probe("us-east-0", True, geo_ms(FRANKFURT, VIRGINIA, PARAMS))  # on its prior: no offset
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    eu = next(c for c in plan.candidates if c.region == "eu-west")
    assert eu.components.excess_ms == pytest.approx(100.0)


def test_fresh_waiting_load_reorders_and_stale_is_ignored(topology, obs, clock) -> None:  # type: ignore[no-untyped-def]
    for eid in ("eu-west-0", "eu-west-1"):
        obs.record_load(eid, running=8, waiting=10, kv_usage=0.9)
    p = planner(topology, obs)
    plan = p.plan(ctx(LONDON_CLIENT))
    assert regions(plan)[0] == "us-east"
    eu = next(c for c in plan.candidates if c.region == "eu-west")
    assert eu.components.queue_ms == pytest.approx(10 * 50.0 + 8 * 2.0 + 200.0 * 0.8)
    clock.advance(10.5)
    plan = p.plan(ctx(LONDON_CLIENT))
    assert regions(plan)[0] == "eu-west"
    assert plan.candidates[0].components.queue_ms == 0.0


def test_queue_averages_over_endpoints_with_fresh_load(topology, obs) -> None:  # type: ignore[no-untyped-def]
    obs.record_load("eu-west-0", running=0, waiting=4, kv_usage=None)
    obs.record_load("eu-west-1", running=0, waiting=0, kv_usage=None)
    obs.record_load("us-east-0", running=None, waiting=6, kv_usage=None)  # us-east-1: unknown, not idle
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    by_region = {c.region: c.components.queue_ms for c in plan.candidates}
    assert by_region["eu-west"] == pytest.approx(2 * 50.0)
    assert by_region["us-east"] == pytest.approx(6 * 50.0)
    assert by_region["ap-southeast"] == 0.0


def test_in_pool_order_follows_inflight_and_waiting(topology, obs) -> None:  # type: ignore[no-untyped-def]
    p = planner(topology, obs, RoutingParams(queue_ms_per_waiting=1.0))  # keep eu-west first
    for _ in range(3):
        obs.acquire("eu-west-0")
    assert [c.endpoint.id for c in p.plan(ctx(LONDON_CLIENT)).candidates[:2]] == ["eu-west-1", "eu-west-0"]
    obs.record_load("eu-west-1", running=1, waiting=5, kv_usage=0.1)
    assert [c.endpoint.id for c in p.plan(ctx(LONDON_CLIENT)).candidates[:2]] == ["eu-west-0", "eu-west-1"]


def test_scraped_running_counts_for_requests_other_gateways_sent(topology, obs) -> None:  # type: ignore[no-untyped-def]
    p = planner(topology, obs, RoutingParams(queue_ms_per_running=0.0))
    obs.record_load("eu-west-0", running=4, waiting=0, kv_usage=0.2)  # busy with others' requests
    obs.record_load("eu-west-1", running=0, waiting=0, kv_usage=0.0)
    for _ in range(20):
        assert p.plan(ctx(LONDON_CLIENT)).candidates[0].endpoint.id == "eu-west-1"
    for _ in range(6):
        obs.acquire("eu-west-1")  # our own in-flight requests are in its running count: not added twice
    obs.record_load("eu-west-1", running=6, waiting=0, kv_usage=0.3)
    assert p.plan(ctx(LONDON_CLIENT)).candidates[0].endpoint.id == "eu-west-0"


def test_error_rate_and_price_penalties(topology, obs) -> None:  # type: ignore[no-untyped-def]
    obs.record_outcome("eu-west-0", Outcome.HTTP_5XX)
    for _ in range(4):
        obs.record_outcome("eu-west-0", Outcome.SUCCESS)
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    eu = plan.candidates[0]
    assert eu.components.penalty_ms == pytest.approx(0.2 * 500.0 / 2)  # 1 failure in 5, mean of 2 endpoints
    priced = make_topology()
    pools = tuple(type(p)(p.name, p.region, p.models, p.endpoints, p.tags, price_per_mtok=2.0)
                  for p in priced.pools)
    topo = Topology(priced.regions, pools, priced.gateway_location)
    plan = planner(topo, obs, RoutingParams(cost_ms_per_dollar=10.0)).plan(ctx(LONDON_CLIENT))
    assert plan.candidates[-1].components.penalty_ms == pytest.approx(20.0)


def test_static_filters_are_pool_rejections(obs) -> None:  # type: ignore[no-untyped-def]
    topo = make_topology(draining="us-east")
    p = planner(topo, obs)
    plan = p.plan(ctx(US_CLIENT, exclude_pools=frozenset({"eu-west-a"})))
    assert regions(plan) == ["ap-southeast"]
    assert Rejection("us-east-a", None, "draining") in plan.rejected
    assert Rejection("eu-west-a", None, "excluded") in plan.rejected
    plan = p.plan(ctx(US_CLIENT, required_tags=frozenset({"soc2"})))
    assert regions(plan) == ["eu-west"]
    assert Rejection("ap-southeast-a", None, "tags") in plan.rejected
    assert regions(p.plan(ctx(US_CLIENT, required_tags=frozenset({"gdpr", "soc2"})))) == ["eu-west"]  # region tag
    plan = p.plan(ctx(SG_CLIENT, allowed_jurisdictions=frozenset({"EU", "US"})))
    assert regions(plan) == ["eu-west"]
    assert Rejection("ap-southeast-a", None, "jurisdiction") in plan.rejected


def test_unknown_model(topology, obs) -> None:  # type: ignore[no-untyped-def]
    plan = planner(topology, obs).plan(RequestContext(model="gpt-9", client=LONDON_CLIENT))
    assert plan.candidates == () and len(plan.rejected) == 3
    assert {r.reason for r in plan.rejected} == {"model_not_served"}
    assert "gpt-9" in plan.notes[0]


def test_max_pools_cap(topology, obs) -> None:  # type: ignore[no-untyped-def]
    plan = planner(topology, obs, RoutingParams(max_pools=2)).plan(ctx(SG_CLIENT))
    assert regions(plan) == ["ap-southeast", "eu-west"] and len(plan.candidates) == 4


def test_other_policies_plug_in(topology, obs) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("us-east-0", True, 30.0)
    obs.record_probe("eu-west-0", True, 60.0)
    plan = planner(topology, obs, policy="lowest_latency").plan(ctx(SG_CLIENT))
    assert plan.policy == "lowest_latency" and regions(plan) == ["us-east", "eu-west", "ap-southeast"]
    with pytest.raises(ValueError):
        planner(topology, obs, policy="nope")


def test_explanation(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, "us-east-0")
    obs.record_probe("eu-west-0", True, 40.0)
    obs.record_probe("ap-southeast-0", True, geo_ms(FRANKFURT, SINGAPORE, PARAMS))  # no gateway-side offset
    ex = planner(topology, obs).plan(ctx(LONDON_CLIENT)).explain()
    json.dumps(ex)
    assert ex["model"] == "tiny-chat" and ex["policy"] == "geo_latency" and ex["panic"] is False
    assert ex["client"]["country"] == "GB" and ex["client"]["source"] == "geoip"
    first = ex["candidates"][0]
    assert first["rank"] == 1 and first["region"] == "eu-west" and first["pool"] == "eu-west-a"
    assert first["upstream_model"] == "tiny-eu-west" and first["url"].startswith("http://")
    assert first["excess_ms"] == pytest.approx(35.0)
    assert first["score_ms"] == pytest.approx(first["geo_ms"] + first["excess_ms"]
                                              + first["queue_ms"] + first["penalty_ms"], abs=0.02)
    assert [c["endpoint"] for c in ex["candidates"]].count("us-east-0") == 0
    assert {"pool": "us-east-a", "endpoint": "us-east-0", "reason": "unhealthy"} in ex["rejected"]


def test_ejected_endpoint_returns_when_ejection_ends(topology, clock) -> None:  # type: ignore[no-untyped-def]
    events: list[tuple[str, str, str, str]] = []
    obs = Observations(ObservationParams(consecutive_failures=1, base_ejection_s=30.0), clock,
                       lambda *a: events.append(a))
    obs.sync(topology)
    p = planner(topology, obs)
    obs.record_outcome("eu-west-0", Outcome.RESET)
    assert "eu-west-0" not in {c.endpoint.id for c in p.plan(ctx()).candidates}
    clock.advance(30.0)
    assert "eu-west-0" in {c.endpoint.id for c in p.plan(ctx()).candidates}
    assert events == [("eu-west-0", "outlier", "active", "ejected"), ("eu-west-0", "outlier", "ejected", "active")]


def test_reload_keeps_observations(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, "eu-west-0", "eu-west-1")
    obs.sync(make_topology())  # a reload: same endpoints, new snapshot
    plan = planner(make_topology(), obs).plan(ctx())
    assert regions(plan)[0] == "us-east"


def breaker_obs(topology: Topology, clock, probes: int = 1) -> Observations:  # type: ignore[no-untyped-def]
    o = Observations(ObservationParams(consecutive_failures=100,
                                       breaker=BreakerParams(failures=2, open_s=5.0, half_open_probes=probes)),
                     clock)
    o.sync(topology)
    return o


def test_breaker_open_and_half_open_full_are_rejected(topology, clock) -> None:  # type: ignore[no-untyped-def]
    obs = breaker_obs(topology, clock)
    p = planner(topology, obs)
    for _ in range(2):
        obs.record_outcome("ap-southeast-0", Outcome.HTTP_5XX)
    plan = p.plan(ctx(SG_CLIENT))
    assert Rejection("ap-southeast-a", "ap-southeast-0", "breaker_open") in plan.rejected
    assert [c.endpoint.id for c in plan.candidates][0] == "ap-southeast-1" and not plan.panic
    clock.advance(5.0)
    plan = p.plan(ctx(SG_CLIENT))  # half-open with a free trial slot: eligible again
    assert "ap-southeast-0" in {c.endpoint.id for c in plan.candidates}
    assert not any(r.endpoint == "ap-southeast-0" for r in plan.rejected)
    obs.acquire("ap-southeast-0")
    plan = p.plan(ctx(SG_CLIENT))
    assert Rejection("ap-southeast-a", "ap-southeast-0", "breaker_half_open") in plan.rejected
    assert "ap-southeast-0" not in {c.endpoint.id for c in plan.candidates}


def test_breaker_open_pool_and_panic(topology, clock) -> None:  # type: ignore[no-untyped-def]
    obs = breaker_obs(topology, clock)
    for eid in topology.endpoints:
        if not eid.startswith("us-east"):
            for _ in range(2):
                obs.record_outcome(eid, Outcome.CONNECT_ERROR)
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert Rejection("ap-southeast-a", None, "breaker_open") in plan.rejected
    # panic, but an open breaker means no traffic: only the two eligible endpoints are planned
    assert plan.panic and [c.endpoint.id for c in plan.candidates] in (["us-east-0", "us-east-1"],
                                                                      ["us-east-1", "us-east-0"])
    assert any("breaker is open" in n for n in plan.notes)


def test_panic_readds_unhealthy_but_not_breaker_open_endpoints(topology, clock) -> None:  # type: ignore[no-untyped-def]
    obs = breaker_obs(topology, clock)
    kill(obs, "eu-west-0", "eu-west-1", "us-east-0")  # unhealthy: panic may still try them
    for _ in range(2):
        obs.record_outcome("ap-southeast-0", Outcome.HTTP_5XX)  # breaker open: never
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    planned = {c.endpoint.id for c in plan.candidates}
    assert plan.panic and planned == {"ap-southeast-1", "us-east-1", "eu-west-0", "eu-west-1", "us-east-0"}


def test_panic_lets_only_the_half_open_trials_through(topology, clock) -> None:  # type: ignore[no-untyped-def]
    obs = breaker_obs(topology, clock)
    for eid in topology.endpoints:
        for _ in range(2):
            obs.record_outcome(eid, Outcome.CONNECT_ERROR)
    p = planner(topology, obs)
    plan = p.plan(ctx(SG_CLIENT))
    assert plan.panic and plan.candidates == ()  # every breaker open: nothing, panic or not
    clock.advance(5.0)  # half-open: one trial slot each
    plan = p.plan(ctx(SG_CLIENT))
    assert len(plan.candidates) == 6 and not plan.panic
    for eid in topology.endpoints:
        if eid != "us-east-0":
            obs.acquire(eid)  # their trial is in flight
    plan = p.plan(ctx(SG_CLIENT))
    assert plan.panic and [c.endpoint.id for c in plan.candidates] == ["us-east-0"]
    assert Rejection("eu-west-a", None, "breaker_half_open") in plan.rejected


def test_throttled_endpoint_rejected_until_it_expires(topology, obs, clock) -> None:  # type: ignore[no-untyped-def]
    p = planner(topology, obs)
    obs.throttle("eu-west-0", 3.0)
    plan = p.plan(ctx(LONDON_CLIENT))
    assert Rejection("eu-west-a", "eu-west-0", "throttled") in plan.rejected
    assert plan.candidates[0].endpoint.id == "eu-west-1"
    obs.throttle("eu-west-1", 3.0)
    plan = p.plan(ctx(LONDON_CLIENT))
    assert Rejection("eu-west-a", None, "throttled") in plan.rejected and regions(plan)[0] == "us-east"
    clock.advance(3.0)
    plan = p.plan(ctx(LONDON_CLIENT))
    assert regions(plan)[0] == "eu-west" and not plan.rejected


def test_panic_never_sends_to_throttled_endpoints(topology, obs) -> None:  # type: ignore[no-untyped-def]
    kill(obs, "ap-southeast-0", "ap-southeast-1", "eu-west-0")
    obs.throttle("eu-west-1", 10.0)
    plan = planner(topology, obs).plan(ctx(SG_CLIENT))
    assert plan.panic
    ids = [c.endpoint.id for c in plan.candidates]
    assert set(ids[:2]) == {"us-east-0", "us-east-1"} and "eu-west-1" not in ids and len(ids) == 5
    assert Rejection("eu-west-a", None, "unhealthy_or_ejected") in plan.rejected  # the record stays


def inflate(obs: Observations, topology: Topology, extra_ms: dict[str, float]) -> None:
    """Probe every endpoint of the given regions at its geo prior plus ``extra_ms[region]``."""
    for pool in topology.pools:
        if pool.region in extra_ms:
            prior = geo_ms(topology.gateway_location, topology.regions[pool.region].location, PARAMS)
            for ep in pool.endpoints:
                obs.record_probe(ep.id, True, prior + extra_ms[pool.region])


@pytest.mark.parametrize("client", [SG_CLIENT, LONDON_CLIENT, US_CLIENT])
def test_gateway_side_offset_does_not_reorder_equal_excess(topology, obs, client) -> None:  # type: ignore[no-untyped-def]
    p = planner(topology, obs)
    before = regions(p.plan(ctx(client)))
    inflate(obs, topology, {"us-east": 80.0, "eu-west": 80.0, "ap-southeast": 80.0})
    plan = p.plan(ctx(client))
    assert regions(plan) == before
    assert all(c.components.excess_ms == pytest.approx(0.0, abs=1e-9) for c in plan.candidates)
    assert "gateway-side latency offset 80.0 ms subtracted" in plan.notes


def test_gateway_side_offset_against_unmeasured_pools(topology, obs) -> None:  # type: ignore[no-untyped-def]
    # start-up: the near pools were probed first, through a busy event loop; the far one not yet
    inflate(obs, topology, {"eu-west": 150.0, "us-east": 150.0})
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    # without the offset: ap-southeast (~113 ms, unmeasured) before eu-west (~11 + 150 ms)
    assert regions(plan) == ["eu-west", "us-east", "ap-southeast"]
    assert plan.candidates[0].components.excess_ms == pytest.approx(0.0, abs=1e-9)


def test_genuinely_slow_pool_still_reordered(topology, obs) -> None:  # type: ignore[no-untyped-def]
    inflate(obs, topology, {"us-east": 80.0, "eu-west": 80.0 + 150.0, "ap-southeast": 80.0})
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    assert regions(plan) == ["us-east", "ap-southeast", "eu-west"]  # eu-west: ~11 + 150 ms
    eu = next(c for c in plan.candidates if c.region == "eu-west")
    assert eu.components.excess_ms == pytest.approx(150.0)
    assert plan.candidates[0].components.excess_ms == pytest.approx(0.0, abs=1e-9)
    assert any("offset 80.0 ms" in n for n in plan.notes)


def test_no_offset_note_when_a_pool_is_at_its_prior(topology, obs) -> None:  # type: ignore[no-untyped-def]
    inflate(obs, topology, {"us-east": 0.0, "eu-west": 40.0})
    plan = planner(topology, obs).plan(ctx(LONDON_CLIENT))
    assert not any("offset" in n for n in plan.notes)
    eu = next(c for c in plan.candidates if c.region == "eu-west")
    assert eu.components.excess_ms == pytest.approx(40.0)


def _two_model_topology() -> Topology:
    """make_topology with eu-west-a also serving small-chat (upstream name "small")."""
    from dataclasses import replace

    base = make_topology()
    pools = tuple(replace(p, models={**p.models, "small-chat": "small"}) if p.name == "eu-west-a" else p
                  for p in base.pools)
    return Topology(base.regions, pools, base.gateway_location, gateway_region="eu-west")


def test_a_model_throttle_holds_back_that_model_only(clock) -> None:  # type: ignore[no-untyped-def]
    topology = _two_model_topology()
    obs = Observations(ObservationParams(), clock)
    obs.sync(topology)
    p = planner(topology, obs)
    obs.throttle_model("eu-west-0", "small", 2.0)
    obs.throttle_model("nowhere-0", "small", 2.0)  # unknown endpoint: ignored
    small = p.plan(RequestContext(model="small-chat", client=LONDON_CLIENT))
    assert [c.endpoint.id for c in small.candidates] == ["eu-west-1"]
    assert Rejection("eu-west-a", "eu-west-0", "throttled") in small.rejected
    tiny = p.plan(ctx())  # the same endpoint's other model keeps its traffic
    assert "eu-west-0" in {c.endpoint.id for c in tiny.candidates} and not tiny.rejected
    assert obs.snapshot()["eu-west-0"]["throttled_models"] == {"small": clock.now + 2.0}  # clock time, as throttled_until
    obs.throttle_model("eu-west-1", "small", 2.0)
    assert p.plan(RequestContext(model="small-chat", client=LONDON_CLIENT)).candidates == ()  # panic does not re-add throttled ones
    clock.advance(2.0)
    assert len(p.plan(RequestContext(model="small-chat", client=LONDON_CLIENT)).candidates) == 2 and not obs.has_model_throttles


def test_model_throttles_leave_with_their_endpoint(clock) -> None:  # type: ignore[no-untyped-def]
    topology = _two_model_topology()
    obs = Observations(ObservationParams(max_throttle_s=5.0), clock)
    obs.sync(topology)
    obs.throttle_model("eu-west-0", "small", 3600.0)  # capped at max_throttle_s
    assert obs.snapshot()["eu-west-0"]["throttled_models"] == {"small": clock.now + 5.0}
    base = make_topology()
    obs.sync(Topology(base.regions, tuple(p for p in base.pools if p.name != "eu-west-a"), base.gateway_location))
    obs.sync(topology)  # gone and back: the throttle went with it
    assert not obs.has_model_throttles and not obs.model_throttled("eu-west-0", "small")
