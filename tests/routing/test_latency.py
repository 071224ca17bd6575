from __future__ import annotations

import pytest

from routing.latency import LatencyEwma, QuantileWindow


def test_none_until_first_sample(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    assert est.value() is None and est.updated_at is None
    assert est.update(80.0) == 80.0
    assert est.value() == 80.0 and est.samples == 1


def test_warm_up_is_the_plain_mean(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    for sample in (300.0, 60.0, 60.0, 60.0):  # a cold first probe, then warm ones 1 s apart
        est.update(sample)
        clock.advance(1.0)
    assert est.value() == pytest.approx(120.0)  # mean of four, not ~280


def test_one_half_life_later_a_sample_counts_half(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    for _ in range(10):  # past warm-up: the n-th sample's floor 1/n is below the time weight
        est.update(100.0)
    clock.advance(10.0)
    assert est.update(200.0) == pytest.approx(150.0)
    clock.advance(20.0)  # two half-lives: weight 0.75
    assert est.update(50.0) == pytest.approx(150.0 + 0.75 * (50.0 - 150.0))


def test_samples_at_same_instant_move_little_after_warm_up(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    for _ in range(100):
        est.update(100.0)
    est.update(1100.0)
    assert est.value() == pytest.approx(100.0 + 1000.0 / 101)  # weight 1/101: one of 101 samples
    for _ in range(99):
        est.update(1100.0)
    assert est.value() == pytest.approx(600.0)  # a same-instant burst is averaged, never erases history
    clock.advance(600.0)
    assert est.update(20.0) == pytest.approx(20.0, abs=1e-3)  # long silence: the new sample rules


def test_bad_samples_ignored_and_bad_half_life_rejected(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    est.update(float("nan"))
    est.update(-1.0)
    est.update(float("inf"))
    assert est.value() is None and est.samples == 0
    with pytest.raises(ValueError):
        LatencyEwma(0.0, clock)


def test_quantile_window_nearest_rank() -> None:
    w = QuantileWindow(size=256, min_samples=20)
    for ms in range(100, 0, -1):  # order does not matter
        w.add(float(ms))
    assert (w.quantile(0.95), w.quantile(0.5), w.quantile(1.0), w.quantile(0.0)) == (95.0, 50.0, 100.0, 1.0)
    w.add(-1.0)
    w.add(float("inf"))
    assert len(w) == 100


def test_quantile_window_needs_min_samples_and_forgets_old_ones() -> None:
    w = QuantileWindow(size=30, min_samples=20)
    for _ in range(19):
        w.add(1000.0)
    assert w.quantile(0.95) is None
    w.add(1000.0)
    assert w.quantile(0.95) == 1000.0
    for _ in range(30):
        w.add(10.0)
    assert w.quantile(0.95) == 10.0 and len(w) == 30
    with pytest.raises(ValueError):
        QuantileWindow(size=0)


def test_quantiles_equal_a_sort_of_the_last_samples_as_the_ring_turns() -> None:
    """The sorted copy kept per sample is the ring's samples sorted, after the ring wraps
    (repeated values included); ignored samples change nothing."""
    import math
    import random
    rng = random.Random(7)
    w = QuantileWindow(size=16, min_samples=1)
    seen: list[float] = []
    for i in range(200):
        sample = float(rng.randint(0, 20)) if i % 7 else rng.choice([-1.0, float("inf"), float("nan"), 3.0])
        w.add(sample)
        if 0.0 <= sample < float("inf"):
            seen.append(sample)
        last = sorted(seen[-16:])
        assert len(w) == len(last)
        for q in (0.0, 0.25, 0.5, 0.95, 1.0):
            want = last[max(1, math.ceil(q * len(last))) - 1] if last else None
            assert w.quantile(q) == want, (i, q)
