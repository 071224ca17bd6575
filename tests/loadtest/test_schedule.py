import random

import pytest

from loadtest.schedule import arrival_offsets, issue, wait_until


class FakeClock:
    """Time moves only when the code under test sleeps (plus an optional per-launch cost)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_constant_offsets_are_exact_multiples() -> None:
    offs = _take(arrival_offsets(4.0, "constant", random.Random(0)), 1001)
    assert offs[:3] == [0.0, 0.25, 0.5] and offs[1000] == 250.0


def test_poisson_offsets_have_the_right_rate_and_are_seeded() -> None:
    offs = _take(arrival_offsets(50.0, "poisson", random.Random(1)), 5001)
    assert offs == _take(arrival_offsets(50.0, "poisson", random.Random(1)), 5001)
    assert all(b >= a for a, b in zip(offs, offs[1:]))
    assert abs(5000 / offs[-1] - 50.0) < 2.5


def test_bad_rate_or_arrival() -> None:
    with pytest.raises(ValueError):
        next(arrival_offsets(0, "constant", random.Random()))
    with pytest.raises(ValueError):
        next(arrival_offsets(1, "bursty", random.Random()))


async def test_issue_follows_absolute_schedule_without_drift() -> None:
    clock = FakeClock()
    launched: list[float] = []

    async def launch(i: int) -> None:
        launched.append(clock.now - 100.0)
        clock.now += 0.003 if i == 2 else 0.0  # one slow launch must not shift the rest

    lags: list[float] = []
    n = await issue(arrival_offsets(10.0, "constant", random.Random()), launch, start=100.0, clock=clock,
                    max_requests=None, duration=1.0, sleep=clock.sleep, lags=lags)
    assert n == 10
    assert launched == pytest.approx([i / 10 for i in range(10)])
    assert max(lags) == pytest.approx(0.0, abs=1e-9)


async def test_issue_records_lateness_and_catches_up() -> None:
    clock = FakeClock()

    async def launch(i: int) -> None:
        if i == 0:
            clock.now += 0.35  # the generator stalls for 350 ms after the first launch

    lags: list[float] = []
    n = await issue(arrival_offsets(10.0, "constant", random.Random()), launch, start=100.0, clock=clock,
                    max_requests=6, duration=None, sleep=clock.sleep, lags=lags)
    assert n == 6
    assert lags == pytest.approx([0.0, 0.25, 0.15, 0.05, 0.0, 0.0])


async def test_wait_until_past_deadline_does_not_sleep() -> None:
    clock = FakeClock()
    assert await wait_until(99.0, clock, clock.sleep) == pytest.approx(1.0)
    assert clock.sleeps == []
    assert await wait_until(100.5, clock, clock.sleep) == 0.0
    assert clock.sleeps == [pytest.approx(0.5)]
