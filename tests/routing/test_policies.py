from __future__ import annotations

import random
from collections import Counter

import pytest

from routing.balance import BALANCERS, P2CBalancer, PrefixAffinityBalancer, get_balancer
from routing.plan import RequestContext, ScoreComponents
from routing.policies import POLICIES, ScoredPool, get_policy
from routing.topology import Endpoint, Location, Pool

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


# --- balancers ------------------------------------------------------------------------------

def eps(*loads: float) -> list[tuple[Endpoint, float]]:
    return [(Endpoint(f"e{i}", f"http://h{i}", "p"), load) for i, load in enumerate(loads)]


def ids(order: list[Endpoint]) -> list[str]:
    return [e.id for e in order]


def test_p2c_returns_every_endpoint_once() -> None:
    rng = random.Random(1)
    for n in range(0, 6):
        order = P2CBalancer().order(CTX, eps(*range(n)), rng)
        assert sorted(ids(order)) == [f"e{i}" for i in range(n)]


def test_p2c_winner_is_less_loaded_of_the_two_and_rest_by_load() -> None:
    rng = random.Random(5)
    items = eps(9.0, 0.0, 5.0, 1.0, 7.0)
    load = dict((e.id, l) for e, l in items)
    for _ in range(200):
        order = ids(P2CBalancer().order(CTX, items, rng))
        assert load[order[0]] <= load[order[1]]
        assert [load[i] for i in order[2:]] == sorted(load[i] for i in order[2:])


def test_p2c_prefers_idle_endpoint_and_never_picks_worst_first() -> None:
    rng = random.Random(3)
    firsts = Counter(ids(P2CBalancer().order(CTX, eps(10.0, 0.0, 10.0), rng))[0] for _ in range(3000))
    # e1 wins every draw it is in: 2/3 of draws
    assert firsts["e1"] / 3000 == pytest.approx(2 / 3, abs=0.04)
    firsts = Counter(ids(P2CBalancer().order(CTX, eps(0.0, 1.0, 2.0, 3.0), rng))[0] for _ in range(1000))
    assert "e3" not in firsts


def test_p2c_equal_load_spreads() -> None:
    rng = random.Random(11)
    firsts = Counter(ids(P2CBalancer().order(CTX, eps(0.0, 0.0), rng))[0] for _ in range(2000))
    assert 800 < firsts["e0"] < 1200


def test_prefix_affinity_is_sticky_and_spread() -> None:
    bal = PrefixAffinityBalancer(c=1.25)
    rng = random.Random(0)
    items = eps(0.0, 0.0, 0.0, 0.0)
    chosen = {}
    for prefix in range(400):
        ctx = RequestContext(model="m", client=CTX.client, prefix_hash=prefix * 7919)
        first = ids(bal.order(ctx, items, rng))
        assert sorted(first) == ["e0", "e1", "e2", "e3"]
        assert ids(bal.order(ctx, items, rng))[0] == first[0]  # same prefix, same endpoint
        chosen[prefix] = first[0]
    spread = Counter(chosen.values())
    assert all(60 < spread[f"e{i}"] < 140 for i in range(4))


def test_prefix_affinity_moves_few_prefixes_when_endpoint_removed() -> None:
    bal = PrefixAffinityBalancer()
    rng = random.Random(0)
    four, three = eps(0.0, 0.0, 0.0, 0.0), eps(0.0, 0.0, 0.0)
    moved = 0
    for prefix in range(400):
        ctx = RequestContext(model="m", client=CTX.client, prefix_hash=prefix)
        before = ids(bal.order(ctx, four, rng))[0]
        after = ids(bal.order(ctx, three, rng))[0]
        moved += before != after
        if before != "e3":
            assert after == before
    assert moved < 150


def test_prefix_affinity_bounded_load_falls_back() -> None:
    bal = PrefixAffinityBalancer(c=1.25)
    rng = random.Random(0)
    ctx = RequestContext(model="m", client=CTX.client, prefix_hash=42)
    home = ids(bal.order(ctx, eps(0.0, 0.0), rng))[0]
    hot = [(e, 10.0 if e.id == home else 2.0) for e, _ in eps(0.0, 0.0)]
    assert ids(bal.order(ctx, hot, rng))[0] != home  # 10 > 1.25 x average
    warm = [(e, 3.0 if e.id == home else 2.0) for e, _ in eps(0.0, 0.0)]
    assert ids(bal.order(ctx, warm, rng))[0] == home  # within the bound: stays


def test_prefix_affinity_without_prefix_is_p2c() -> None:
    items = eps(5.0, 0.0)
    order = PrefixAffinityBalancer().order(CTX, items, random.Random(1))
    assert ids(order) == ["e1", "e0"]
