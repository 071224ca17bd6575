from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from routing.retry import backoff_delay, parse_retry_after


def test_backoff_full_jitter_within_exponential_cap() -> None:
    rng = random.Random(7)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (40, 1.0)]:
        draws = [backoff_delay(attempt, 0.1, 1.0, rng) for _ in range(500)]
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > cap * 0.9  # jitter spans the whole range
        assert min(draws) < cap * 0.1


def test_backoff_nothing_before_first_attempt_and_deterministic_with_seed() -> None:
    assert backoff_delay(0, 0.1, 1.0, random.Random(1)) == 0.0
    assert backoff_delay(3, 0.1, 1.0, random.Random(3)) == backoff_delay(3, 0.1, 1.0, random.Random(3))
    assert backoff_delay(1000, 0.1, 2.0, random.Random(3)) <= 2.0  # no overflow


def test_retry_after_delta_seconds() -> None:
    assert parse_retry_after("120", 0.0) == 120.0
    assert parse_retry_after(" 0 ", 0.0) == 0.0
    assert parse_retry_after("1.5", 0.0) == 1.5


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0  # already past
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed Oct 21 07:28:00 2015", 1445412470.0) == pytest.approx(10.0)


@pytest.mark.parametrize("value", [None, "", "  ", "-5", "soon", "inf", "nan", "Wed, 99 Foo 2015"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, 0.0) is None
