from __future__ import annotations

import pytest

from routing.breaker import BreakerParams, BreakerState, CircuitBreaker
from routing.outcome import Outcome

PARAMS = BreakerParams(failures=3, open_s=5.0, max_open_s=15.0, half_open_probes=2)
Events = list[tuple[str, str, str, str]]


@pytest.fixture
def events() -> Events:
    return []


@pytest.fixture
def br(clock, events) -> CircuitBreaker:  # type: ignore[no-untyped-def]
    return CircuitBreaker("e", PARAMS, clock, lambda *a: events.append(a))


def fail(br: CircuitBreaker, n: int, outcome: Outcome = Outcome.HTTP_5XX) -> None:
    for _ in range(n):
        br.record(outcome)


def state(br: CircuitBreaker) -> BreakerState:
    """Read afresh each time (mypy would otherwise narrow ``br.state`` across calls)."""
    return br.state


def trial(br: CircuitBreaker, outcome: Outcome) -> None:
    """One attempt as the gateway makes it: acquire, release, then record the outcome."""
    br.acquire()
    br.release()
    br.record(outcome)


def test_defaults_and_validation() -> None:
    p = BreakerParams()
    assert (p.enabled, p.failures, p.open_s, p.max_open_s, p.half_open_probes) == (True, 5, 5.0, 60.0, 1)
    with pytest.raises(ValueError):
        BreakerParams(failures=0)
    with pytest.raises(ValueError):
        BreakerParams(open_s=10.0, max_open_s=5.0)
    with pytest.raises(ValueError):
        BreakerParams(half_open_probes=0)


def test_consecutive_failures_open(br, clock, events) -> None:  # type: ignore[no-untyped-def]
    fail(br, 2)
    assert state(br) is BreakerState.CLOSED and br.reason() is None
    fail(br, 1, Outcome.CONNECT_ERROR)
    assert state(br) is BreakerState.OPEN and br.reason() == "breaker_open"
    assert br.open_until == clock.now + 5.0
    assert events == [("e", "breaker", "closed", "open")]


def test_success_breaks_streak_neutral_outcomes_do_not(br) -> None:  # type: ignore[no-untyped-def]
    fail(br, 2)
    br.record(Outcome.SUCCESS)
    fail(br, 2)
    assert state(br) is BreakerState.CLOSED
    br.record(Outcome.CLIENT_ERROR)
    br.record(Outcome.CANCELLED)
    fail(br, 1)
    assert state(br) is BreakerState.OPEN


def test_open_turns_half_open_after_open_period(br, clock, events) -> None:  # type: ignore[no-untyped-def]
    fail(br, 3)
    clock.advance(4.99)
    assert state(br) is BreakerState.OPEN
    fail(br, 5)  # requests admitted before it opened: ignored, the period is not extended
    br.record(Outcome.SUCCESS)  # likewise
    clock.advance(0.01)
    assert state(br) is BreakerState.HALF_OPEN and br.reason() is None
    assert events[-1] == ("e", "breaker", "open", "half_open")


def test_half_open_admits_exactly_n_concurrent_trials(br, clock) -> None:  # type: ignore[no-untyped-def]
    fail(br, 3)
    clock.advance(5.0)
    br.acquire()
    assert br.reason() is None and br.trials == 1
    br.acquire()
    assert br.reason() == "breaker_half_open" and br.trials == 2
    br.release()  # a trial ended without an outcome that decides (cancelled, client error)
    br.record(Outcome.CANCELLED)
    assert state(br) is BreakerState.HALF_OPEN and br.reason() is None and br.trials == 1


def test_trial_success_closes_and_resets_open_period(br, clock, events) -> None:  # type: ignore[no-untyped-def]
    fail(br, 3)
    clock.advance(5.0)
    trial(br, Outcome.HTTP_5XX)  # re-open: 10 s
    clock.advance(10.0)
    trial(br, Outcome.SUCCESS)
    assert state(br) is BreakerState.CLOSED and br.open_until is None and br.trials == 0
    assert [e[2:] for e in events] == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                                       ("open", "half_open"), ("half_open", "closed")]
    start = clock.now
    fail(br, 3)
    assert br.open_until == start + 5.0  # back to open_s


def test_trial_failure_reopens_doubling_up_to_max(br, clock) -> None:  # type: ignore[no-untyped-def]
    fail(br, 3)
    periods = [5.0]
    for _ in range(4):
        assert br.open_until is not None
        clock.now = br.open_until
        assert state(br) is BreakerState.HALF_OPEN
        start = clock.now
        trial(br, Outcome.TIMEOUT)
        assert state(br) is BreakerState.OPEN and br.open_until is not None
        periods.append(br.open_until - start)
    assert periods == [5.0, 10.0, 15.0, 15.0, 15.0]


def test_requests_admitted_before_half_open_never_free_trial_slots(clock) -> None:  # type: ignore[no-untyped-def]
    br = CircuitBreaker("e", BreakerParams(failures=1, half_open_probes=1), clock)
    br.acquire()  # a long stream, admitted while closed
    br.acquire()
    br.record(Outcome.RESET)  # another request fails: open
    clock.advance(5.0)
    assert state(br) is BreakerState.HALF_OPEN and br.trials == 0 and br.reason() is None
    br.acquire()  # the trial
    assert br.reason() == "breaker_half_open"
    br.release()  # the old stream ends first (or so the breaker assumes)
    assert br.reason() == "breaker_half_open" and br.trials == 1


def test_disabled_breaker_never_opens(clock, events) -> None:  # type: ignore[no-untyped-def]
    br = CircuitBreaker("e", BreakerParams(enabled=False, failures=1), clock, lambda *a: events.append(a))
    fail(br, 50)
    assert state(br) is BreakerState.CLOSED and br.reason() is None and events == []


def test_release_never_goes_negative(br, clock) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        br.release()
    fail(br, 3)
    clock.advance(5.0)
    br.acquire()
    br.acquire()
    assert br.reason() == "breaker_half_open"
