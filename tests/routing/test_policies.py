from __future__ import annotations

import pytest

from routing.balance import BALANCERS, get_balancer
from routing.plan import RequestContext, ScoreComponents
from routing.policies import POLICIES, ScoredPool, get_policy
from routing.topology import Location, Pool

CTX = RequestContext(model="m", client=Location(0.0, 0.0))


def sp(name: str, geo: float, excess: float = 0.0, *, tier: int = 0, price: float | None = None,
       measured: float | None = None, queue: float = 0.0) -> ScoredPool:
    pool = Pool(name, "r", {"m": "m"}, (), tier=tier, price_per_mtok=price)
    comps = ScoreComponents(geo, excess, queue, 0.0)
    return ScoredPool(pool, comps, comps.total_ms, measured, [])


def names(ranked: list[ScoredPool]) -> list[str]:
    return [s.pool.name for s in ranked]


# --- registry -----------------------------------------------------------------------------

def test_every_registered_name_maps_to_its_policy() -> None:
    assert {"geo_latency", "lowest_latency", "cost"} <= set(POLICIES)
    for name, cls in POLICIES.items():
        policy = get_policy(name)
        assert isinstance(policy, cls) and policy.name == name
        assert names(policy.rank(CTX, [sp("a", 1.0)])) == ["a"]


def test_every_config_key_maps_to_a_balancer() -> None:
    assert set(BALANCERS) == {"p2c", "prefix_affinity"}
    for name, cls in BALANCERS.items():
        assert isinstance(get_balancer(name), cls) and get_balancer(name).name == name


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="geo_latency"):
        get_policy("fastest")
    with pytest.raises(ValueError, match="p2c"):
        get_balancer("random")


# --- ranking policies -----------------------------------------------------------------------

def test_geo_latency_by_score_then_tier_then_name() -> None:
    pools = [sp("c", 50.0), sp("b", 20.0, tier=1), sp("a", 20.0, tier=1), sp("z", 20.0, tier=0),
             sp("near-but-slow", 5.0, 100.0)]
    assert names(get_policy("geo_latency").rank(CTX, pools)) == ["z", "a", "b", "c", "near-but-slow"]


def test_lowest_latency_ignores_geo() -> None:
    pools = [sp("near", 5.0, measured=120.0), sp("far", 150.0, measured=40.0),
             sp("unmeasured", 1.0), sp("busy", 150.0, measured=30.0, queue=100.0)]
    assert names(get_policy("lowest_latency").rank(CTX, pools)) == ["far", "near", "busy", "unmeasured"]


def test_cost_cheapest_within_slack() -> None:
    pools = [sp("best", 10.0, price=3.0), sp("close-cheap", 40.0, price=1.0),
             sp("close-unpriced", 20.0), sp("far-cheapest", 200.0, price=0.1)]
    ranked = get_policy("cost").rank(CTX, pools)
    assert names(ranked) == ["close-cheap", "best", "close-unpriced", "far-cheapest"]
    assert get_policy("cost").rank(CTX, []) == []
