"""Open-loop arrival schedules computed as absolute offsets, so issuing never drifts.

The issuing loop sleeps until ``start + offset`` of each request rather than sleeping one
interval after the previous one: a late wake-up makes the next requests go out at once (in a
burst) instead of pushing the whole schedule back.  How late each request went out is recorded;
it is the evidence that the generator, not the target, was keeping pace.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def arrival_offsets(rate: float, arrival: str, rng: random.Random) -> Iterator[float]:
    """Endless offsets (seconds from start) for ``rate`` requests/s: ``constant`` spacing or
    ``poisson`` (exponential gaps).  The first request goes out at offset 0."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if arrival not in ("constant", "poisson"):
        raise ValueError(f"unknown arrival process {arrival!r}")
    k = 0
    t = 0.0
    while True:
        if arrival == "constant":
            yield k / rate  # computed from the index: no accumulated float error
            k += 1
        else:
            yield t
            t += rng.expovariate(rate)


async def wait_until(deadline: float, clock: Clock, sleep: Sleep = asyncio.sleep) -> float:
    """Sleep until ``clock() >= deadline`` (or return at once if past); return the lateness in
    seconds (>= 0) at the moment of return."""
    now = clock()
    if deadline > now:
        await sleep(deadline - now)
        now = clock()
    return max(0.0, now - deadline)


async def issue(
    offsets: Iterator[float],
    launch: Callable[[int], Awaitable[None]],
    *,
    start: float,
    clock: Clock,
    max_requests: int | None,
    duration: float | None,
    sleep: Sleep = asyncio.sleep,
    lags: list[float] | None = None,
) -> int:
    """Await ``launch(i)`` (which starts request ``i``; it may wait for an in-flight slot) for each scheduled request until the count or the window
    (``duration`` seconds after ``start``) is exhausted; return how many were launched.
    Lateness of each launch in seconds is appended to ``lags``."""
    count = 0
    for offset in offsets:
        if max_requests is not None and count >= max_requests:
            break
        if duration is not None and offset >= duration:
            break
        late = await wait_until(start + offset, clock, sleep)
        if lags is not None:
            lags.append(late)
        await launch(count)
        count += 1
    return count
