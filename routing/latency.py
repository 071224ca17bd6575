"""Latency estimates: a time-aware EWMA (probe RTTs, observed time to first byte) and a
window of recent samples for quantiles (time to first token, for hedging).

EWMA: a sample arriving ``dt`` seconds after the previous one gets weight ``1 - 0.5 ** (dt /
half_life_s)``: after one half-life of silence the new sample counts for half.  Samples at
the same instant therefore move the estimate little, which keeps a burst of requests from
overwriting what probes have measured over minutes.

Warm-up: the n-th sample weighs at least ``1 / n``, so the estimate starts as the plain mean
of the first samples.  Without it the first sample (often a cold connection: TCP set-up, a
busy event loop) would stick for about a half-life, however many good samples follow.
"""
from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class LatencyEwma:
    __slots__ = ("half_life_s", "_clock", "_value", "_at", "samples")

    def __init__(self, half_life_s: float, clock: Clock) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s
        self._clock = clock
        self._value: float | None = None
        self._at = 0.0
        self.samples = 0

    def update(self, sample_ms: float) -> float:
        """Feed one sample (negative or non-finite samples are ignored); returns the estimate."""
        now = self._clock()
        if not (sample_ms >= 0.0 and sample_ms != float("inf")):
            return self._value if self._value is not None else 0.0
        self.samples += 1
        if self._value is None:
            self._value = sample_ms
        else:
            dt = max(0.0, now - self._at)
            w = max(1.0 - 0.5 ** (dt / self.half_life_s), 1.0 / self.samples)
            self._value += w * (sample_ms - self._value)
        self._at = now
        return self._value

    def value(self) -> float | None:
        """The estimate in ms, or None before the first sample."""
        return self._value

    @property
    def updated_at(self) -> float | None:
        return self._at if self._value is not None else None


class QuantileWindow:
    """The last ``size`` samples (a bounded ring), for quantiles such as the p95 time to first
    token that sets a hedging threshold.  Quantiles are nearest-rank (always a value that was
    seen) and need at least ``min_samples``; a sorted copy is kept up to date with each sample
    (two bisections), not sorted again per quantile: a quantile is read on every request."""
    __slots__ = ("min_samples", "_ring", "_sorted")

    def __init__(self, size: int = 256, min_samples: int = 20) -> None:
        if size < 1 or min_samples < 1:
            raise ValueError("size and min_samples must be >= 1")
        self.min_samples = min_samples
        self._ring: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, sample: float) -> None:
        """Feed one sample (negative or non-finite samples are ignored)."""
        if 0.0 <= sample < math.inf:
            ring, ordered = self._ring, self._sorted
            if len(ring) == ring.maxlen:
                del ordered[bisect_left(ordered, ring[0])]  # the sample the ring drops now
            ring.append(sample)
            insort(ordered, sample)

    def quantile(self, q: float, min_samples: int | None = None) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1; q <= 0 gives the minimum), or None
        with fewer than ``min_samples`` samples (the window's own unless given; at least 1)."""
        n = len(self._ring)
        if n < max(self.min_samples if min_samples is None else min_samples, 1):
            return None
        rank = math.ceil(min(max(q, 0.0), 1.0) * n)
        return self._sorted[max(rank, 1) - 1]
