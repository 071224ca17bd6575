"""Adaptive deadlines: fixed, pool override, auto from the pool's observations, fallback."""
from __future__ import annotations

import pytest

from routing.deadlines import (AutoParams, Deadline, DeadlineSettings, GapMeter, PoolTimings,
                               effective_deadlines)
from routing.observations import ObservationParams, Observations
from routing.topology import Topology
from tests.routing.helpers import FakeClock

TTFT_AUTO = AutoParams(factor=3.0, floor_s=1.0, ceiling_s=30.0, min_samples=20, fallback_s=30.0)
STALL_AUTO = AutoParams(factor=4.0, floor_s=2.0, ceiling_s=30.0, min_samples=10, fallback_s=10.0)
AUTO = DeadlineSettings(TTFT_AUTO, STALL_AUTO)


def test_fixed_numbers_are_used_as_they_are() -> None:
    d = effective_deadlines(DeadlineSettings(12.0, 7.0), PoolTimings(500, 100.0, 500, 50.0))
    assert d.ttft == Deadline(12.0, "fixed") and d.stall == Deadline(7.0, "fixed")
    assert (d.ttft_s, d.stall_s) == (12.0, 7.0)


def test_the_pool_deadline_overrides_the_models_ttft_only() -> None:
    d = effective_deadlines(AUTO, PoolTimings(), pool_ttft_s=4.0)
    assert d.ttft == Deadline(4.0, "pool") and d.stall.source == "fallback"


def test_too_few_samples_fall_back() -> None:
    d = effective_deadlines(AUTO, PoolTimings(19, 400.0, 9, 800.0))
    assert d.ttft == Deadline(30.0, "fallback", 19) and d.stall == Deadline(10.0, "fallback", 9)


def test_auto_is_p99_times_factor() -> None:
    d = effective_deadlines(AUTO, PoolTimings(20, 2000.0, 10, 1500.0))
    assert d.ttft == Deadline(6.0, "auto", 20, 2.0) and d.stall == Deadline(6.0, "auto", 10, 1.5)


@pytest.mark.parametrize("p99_ms, expected", [(10.0, 1.0), (100_000.0, 30.0)])
def test_auto_is_clamped_to_floor_and_ceiling(p99_ms: float, expected: float) -> None:
    assert effective_deadlines(AUTO, PoolTimings(50, p99_ms)).ttft_s == expected


def test_explanation_names_the_source() -> None:
    d = effective_deadlines(AUTO, PoolTimings(40, 500.0, 3, 90.0))
    assert d.explain() == {"ttft": {"s": 1.5, "source": "auto", "samples": 40, "p99_s": 0.5},
                           "stall": {"s": 10.0, "source": "fallback", "samples": 3}}
    assert d.ttft.describe() == "1.5s auto(p99 0.5s, 40)" and d.stall.describe() == "10s fallback(3)"
    assert Deadline(30.0, "fixed").describe() == "30s fixed"


@pytest.mark.parametrize("kw", [dict(factor=0.0), dict(floor_s=5.0, ceiling_s=4.0), dict(min_samples=0),
                                dict(fallback_s=0.0), dict(floor_s=0.0)])
def test_auto_params_are_checked(kw: dict[str, float]) -> None:
    base = dict(factor=2.0, floor_s=1.0, ceiling_s=10.0, min_samples=5, fallback_s=5.0)
    with pytest.raises(ValueError):
        AutoParams(**{**base, **kw})  # type: ignore[arg-type]


def test_gap_meter_keeps_the_longest_gap_and_the_count() -> None:
    meter = GapMeter()
    for t in (10.0, 10.02, 10.04, 10.54, 10.56):
        meter.tick(t)
    assert meter.gaps == 4 and meter.max_ms == pytest.approx(500.0)
    assert GapMeter().gaps == 0 and GapMeter().max_ms == 0.0


def _obs(topology: Topology, clock: FakeClock) -> Observations:
    o = Observations(ObservationParams(gap_window=4), clock)
    o.sync(topology)
    return o


def test_observations_feed_the_deadlines(topology: Topology, clock: FakeClock) -> None:
    obs = _obs(topology, clock)
    assert obs.pool_timings("eu-west-a") == PoolTimings() and obs.pool_timings("nowhere") == PoolTimings()
    for ms in range(1, 101):
        obs.record_ttft("eu-west-0", float(ms))
        obs.record_stream_gaps("eu-west-1", float(ms), gaps=30)
    obs.record_stream_gaps("eu-west-1", 10_000.0, gaps=0)  # a one-chunk stream: nothing to learn
    obs.record_stream_gaps("nowhere-0", 10_000.0, gaps=5)  # unknown endpoint: ignored
    t = obs.pool_timings("eu-west-a")
    assert t == PoolTimings(100, 99.0, 4, 100.0)  # the gap window keeps the last 4 streams
    assert obs.pool_timings("us-east-a") == PoolTimings()  # per pool
    settings = DeadlineSettings(AutoParams(3.0, 0.1, 30.0, 100, 30.0), AutoParams(4.0, 0.1, 30.0, 4, 10.0))
    d = effective_deadlines(settings, t)
    assert d.ttft.seconds == pytest.approx(0.297) and d.ttft == Deadline(d.ttft.seconds, "auto", 100, 0.099)
    assert d.stall == Deadline(0.4, "auto", 4, 0.1)


def test_pool_timings_survive_a_reload(topology: Topology, clock: FakeClock) -> None:
    obs = _obs(topology, clock)
    obs.record_stream_gaps("eu-west-0", 250.0, gaps=10)
    obs.sync(topology)
    assert obs.pool_timings("eu-west-a").gap_samples == 1
