from __future__ import annotations

import pytest

from routing.latency import LatencyEwma


def test_none_until_first_sample(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    assert est.value() is None and est.updated_at is None
    assert est.update(80.0) == 80.0
    assert est.value() == 80.0 and est.samples == 1


def test_one_half_life_later_a_sample_counts_half(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    est.update(100.0)
    clock.advance(10.0)
    assert est.update(200.0) == pytest.approx(150.0)
    clock.advance(20.0)  # two half-lives: weight 0.75
    assert est.update(50.0) == pytest.approx(150.0 + 0.75 * (50.0 - 150.0))


def test_samples_at_same_instant_barely_move(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    est.update(100.0)
    for _ in range(100):
        est.update(1000.0)
    assert est.value() == 100.0
    clock.advance(0.1)
    assert est.update(1000.0) == pytest.approx(100.0 + 900.0 * (1 - 0.5 ** 0.01))


def test_long_silence_means_new_sample_dominates(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(5.0, clock)
    est.update(300.0)
    clock.advance(600.0)
    assert est.update(20.0) == pytest.approx(20.0, abs=1e-6)


def test_bad_samples_ignored_and_bad_half_life_rejected(clock) -> None:  # type: ignore[no-untyped-def]
    est = LatencyEwma(10.0, clock)
    est.update(float("nan"))
    est.update(-1.0)
    est.update(float("inf"))
    assert est.value() is None and est.samples == 0
    with pytest.raises(ValueError):
        LatencyEwma(0.0, clock)
