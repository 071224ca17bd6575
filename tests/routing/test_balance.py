from __future__ import annotations

import random
from collections import Counter

import pytest

from routing.balance import P2CBalancer, PrefixAffinityBalancer
from routing.plan import RequestContext
from routing.topology import Endpoint, Location

CTX = RequestContext(model="m", client=Location(0.0, 0.0))


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
