from __future__ import annotations

import pytest

from routing.budget import RetryBudget


def spend_all(budget: RetryBudget, cap: int = 10_000) -> int:
    n = 0
    while n < cap and budget.try_spend():
        n += 1
    return n


def test_validation(clock) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        RetryBudget(-0.1, 1.0, 10.0, clock)
    with pytest.raises(ValueError):
        RetryBudget(0.5, -1.0, 10.0, clock)
    with pytest.raises(ValueError):
        RetryBudget(0.5, 1.0, 0.0, clock)


def test_low_traffic_gets_min_per_s(clock) -> None:  # type: ignore[no-untyped-def]
    b = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=clock)
    for _ in range(5):
        b.record_request()  # 0.2 * 5 = 1 < 1/s * 10 s
    assert spend_all(b) == 10
    assert b.spent_total == 10 and b.denied_total == 1


def test_high_traffic_gets_ratio(clock) -> None:  # type: ignore[no-untyped-def]
    b = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=clock)
    for _ in range(1000):
        b.record_request()
    assert spend_all(b) == 200


def test_zero_budget_allows_nothing(clock) -> None:  # type: ignore[no-untyped-def]
    b = RetryBudget(ratio=0.0, min_per_s=0.0, window_s=10.0, clock=clock)
    b.record_request()
    assert not b.try_spend()


def test_recovers_as_the_window_slides(clock) -> None:  # type: ignore[no-untyped-def]
    b = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(100):
        b.record_request()
    assert spend_all(b) == 50
    clock.advance(5.0)
    for _ in range(100):
        b.record_request()  # 200 requests in the window: 100 allowed, 50 spent
    assert spend_all(b) == 50
    clock.advance(5.0)  # the first 100 requests and 50 retries slid out: 100 and 50 left, none to spend
    assert not b.try_spend()
    clock.advance(5.0)  # everything slid out
    for _ in range(10):
        b.record_request()
    assert spend_all(b) == 5


def test_long_idle_then_traffic(clock) -> None:  # type: ignore[no-untyped-def]
    b = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=3.0, clock=clock)
    b.record_request()
    assert b.try_spend()
    clock.advance(1e6)  # far beyond the ring: everything expires, in bounded work
    assert not b.try_spend()
    b.record_request()
    assert b.try_spend() and not b.try_spend()


def test_fractional_window(clock) -> None:  # type: ignore[no-untyped-def]
    b = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=0.5, clock=clock)
    b.record_request()
    assert b.try_spend() and not b.try_spend()
    clock.advance(0.5)
    b.record_request()
    assert b.try_spend()
