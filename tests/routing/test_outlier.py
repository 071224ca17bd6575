from __future__ import annotations

import pytest

from routing.outcome import Outcome
from routing.outlier import DecayingErrorRate, OutlierDetector, OutlierParams

PARAMS = OutlierParams(consecutive_failures=3, base_ejection_s=10.0, max_ejection_s=35.0,
                       max_ejected_percent=50.0, decay_s=60.0)


@pytest.fixture
def events() -> list[tuple[str, str, str, str]]:
    return []


@pytest.fixture
def det(clock, events) -> OutlierDetector:  # type: ignore[no-untyped-def]
    d = OutlierDetector(PARAMS, clock, lambda *a: events.append(a))
    d.sync({"p": ["a", "b", "c", "d"], "q": ["x"]})
    return d


def fail(det: OutlierDetector, eid: str, n: int, outcome: Outcome = Outcome.HTTP_5XX) -> None:
    for _ in range(n):
        det.record(eid, outcome)


def test_consecutive_failures_eject(det, events) -> None:  # type: ignore[no-untyped-def]
    fail(det, "a", 2)
    assert not det.is_ejected("a")
    assert det.record("a", Outcome.CONNECT_ERROR) is True
    assert det.is_ejected("a")
    assert events == [("a", "outlier", "active", "ejected")]


def test_success_breaks_streak_and_neutral_outcomes_do_not(det) -> None:  # type: ignore[no-untyped-def]
    fail(det, "a", 2)
    det.record("a", Outcome.SUCCESS)
    fail(det, "a", 2)
    assert not det.is_ejected("a")
    det.record("a", Outcome.CLIENT_ERROR)
    det.record("a", Outcome.CANCELLED)
    fail(det, "a", 1)
    assert det.is_ejected("a")


def test_ejection_time_grows_exponentially_with_cap(det, clock, events) -> None:  # type: ignore[no-untyped-def]
    durations = []
    for _ in range(4):
        start = clock.now
        fail(det, "a", 3)
        durations.append(det.state("a").ejected_until - start)
        clock.now = det.state("a").ejected_until
        assert not det.is_ejected("a")  # ejection ends when the clock passes it
    assert durations == [10.0, 20.0, 35.0, 35.0]
    assert events.count(("a", "outlier", "ejected", "active")) == 4


def test_times_ejected_decays_after_quiet_period(det, clock) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):
        fail(det, "a", 3)
        clock.now = det.state("a").ejected_until
    assert det.times_ejected("a") == 2
    clock.advance(59.0)
    assert det.times_ejected("a") == 2
    clock.advance(1.0)
    assert det.times_ejected("a") == 1
    clock.advance(600.0)
    assert det.times_ejected("a") == 0
    start = clock.now
    fail(det, "a", 3)
    assert det.state("a").ejected_until - start == 10.0  # back to the base time


def test_failure_restarts_quiet_period(det, clock) -> None:  # type: ignore[no-untyped-def]
    fail(det, "a", 3)
    clock.now = det.state("a").ejected_until + 50.0
    fail(det, "a", 1)
    clock.advance(50.0)
    assert det.times_ejected("a") == 1  # only 50 s quiet since the last failure


def test_max_ejected_percent(det) -> None:  # type: ignore[no-untyped-def]
    fail(det, "a", 3)
    fail(det, "b", 3)
    fail(det, "c", 3)  # 2 of 4 already out: 50 % reached
    assert [det.is_ejected(e) for e in "abcd"] == [True, True, False, False]
    assert det.ejected_in_pool("p") == 2
    assert det.state("c").consecutive_failures == 3  # still counted
    fail(det, "x", 3)  # a one-endpoint pool may always lose one
    assert det.is_ejected("x")


def test_zero_percent_disables_ejection(clock) -> None:  # type: ignore[no-untyped-def]
    d = OutlierDetector(OutlierParams(consecutive_failures=1, max_ejected_percent=0.0), clock)
    d.sync({"p": ["a"]})
    d.record("a", Outcome.TIMEOUT)
    assert not d.is_ejected("a")


def test_failures_while_ejected_do_not_extend(det, clock) -> None:  # type: ignore[no-untyped-def]
    fail(det, "a", 3)
    until = det.state("a").ejected_until
    fail(det, "a", 10)
    assert det.state("a").ejected_until == until and det.times_ejected("a") == 1


def test_unknown_ids_ignored_and_sync_keeps_state(det) -> None:  # type: ignore[no-untyped-def]
    assert det.record("nope", Outcome.HTTP_5XX) is False
    assert not det.is_ejected("nope") and det.error_rate("nope") == 0.0
    fail(det, "a", 3)
    det.sync({"p": ["a", "e"]})
    assert det.is_ejected("a") and det.state("b") is None and det.state("e") is not None


def test_error_rate_decays(clock) -> None:  # type: ignore[no-untyped-def]
    rate = DecayingErrorRate(half_life_s=30.0, min_volume=5.0)
    rate.record(True, clock.now)
    assert rate.value(clock.now) == 0.0  # below the minimum volume: no evidence yet
    for _ in range(4):
        rate.record(False, clock.now)
    assert rate.value(clock.now) == pytest.approx(0.2)
    for _ in range(5):
        rate.record(False, clock.now)
    assert rate.value(clock.now) == pytest.approx(0.1)
    for _ in range(10):
        rate.record(True, clock.now)
    assert rate.value(clock.now) == pytest.approx(0.55)
    clock.advance(30.0)
    assert rate.value(clock.now) == pytest.approx(0.55)  # ratio kept while volume is high
    clock.advance(300.0)
    assert rate.value(clock.now) < 0.01  # volume decays away


def test_detector_error_rate(det, clock) -> None:  # type: ignore[no-untyped-def]
    det.record("a", Outcome.SUCCESS)
    det.record("a", Outcome.HTTP_5XX)
    det.record("a", Outcome.CANCELLED)  # neutral: not a request volume either
    assert det.error_rate("a") == 0.0  # 2 requests: below the minimum volume of 5
    for _ in range(3):
        det.record("a", Outcome.SUCCESS)
    assert det.error_rate("a") == pytest.approx(1 / 5)
    assert det.error_rate("b") == 0.0
