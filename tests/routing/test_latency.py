from __future__ import annotations

import pytest

from routing.latency import LatencyEwma


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
