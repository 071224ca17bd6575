"""The deadlines one attempt gets: time to first token and the stall timeout (silence inside a
stream), fixed by the config or derived from what the gateway has observed of the pool.

``auto`` (the default for both): the pool's observed p99 × ``factor``, clamped to
[``floor_s``, ``ceiling_s``]; with fewer than ``min_samples`` samples, ``fallback_s``.

* time to first token: the pool's recent times to first token (``Observations.record_ttft``,
  the window hedging's ``after_ms: p95`` reads);
* stall: the pool's recent streams' longest gap between two chunks (``GapMeter`` per stream,
  ``Observations.record_stream_gaps`` once at its end).  A stall timeout must outlast the longest
  silence a healthy stream shows, so the quantile is over each stream's maximum, not over every
  gap (a p99 over all gaps would be mostly one token's time and cut healthy streams).

A pool's own ``ttft_deadline_s`` overrides the model's first-token deadline (source ``pool``).
:func:`effective_deadlines` is pure: the caller hands it the pool's :class:`PoolTimings`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Source = Literal["fixed", "pool", "auto", "fallback"]
QUANTILE = 0.99


@dataclass(frozen=True, slots=True)
class AutoParams:
    factor: float
    floor_s: float
    ceiling_s: float
    min_samples: int
    fallback_s: float

    def __post_init__(self) -> None:
        if not (self.factor > 0 and 0 < self.floor_s <= self.ceiling_s and self.min_samples >= 1
                and self.fallback_s > 0):
            raise ValueError("need factor > 0, 0 < floor_s <= ceiling_s, min_samples >= 1, fallback_s > 0")


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    """A model's deadline settings: a fixed number of seconds, or ``AutoParams``."""

    ttft: float | AutoParams
    stall: float | AutoParams


@dataclass(frozen=True, slots=True)
class PoolTimings:
    """What the gateway has seen of one pool: sample counts and p99s (None without samples)."""

    ttft_samples: int = 0
    ttft_p99_ms: float | None = None
    gap_samples: int = 0  # streams measured
    gap_p99_ms: float | None = None  # p99 of each stream's longest gap between chunks


class TimingSource(Protocol):
    def pool_timings(self, pool_name: str) -> PoolTimings: ...


@dataclass(frozen=True, slots=True)
class Deadline:
    seconds: float
    source: Source
    samples: int = 0  # samples the pool had (auto and fallback)
    p99_s: float | None = None  # the observed p99 that auto multiplied

    def explain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"s": round(self.seconds, 3), "source": self.source}
        if self.source in ("auto", "fallback"):
            out["samples"] = self.samples
        if self.p99_s is not None:
            out["p99_s"] = round(self.p99_s, 3)
        return out

    def describe(self) -> str:
        """Short text: ``2.4s auto(p99 0.6s, 120)``, ``10s fallback(3)``, ``30s fixed``."""
        if self.source == "auto":
            return f"{self.seconds:.3g}s auto(p99 {self.p99_s or 0:.3g}s, {self.samples})"
        if self.source == "fallback":
            return f"{self.seconds:.3g}s fallback({self.samples})"
        return f"{self.seconds:.3g}s {self.source}"


@dataclass(frozen=True, slots=True)
class Deadlines:
    ttft: Deadline
    stall: Deadline

    @property
    def ttft_s(self) -> float:
        return self.ttft.seconds

    @property
    def stall_s(self) -> float:
        return self.stall.seconds

    def explain(self) -> dict[str, Any]:
        return {"ttft": self.ttft.explain(), "stall": self.stall.explain()}


def _derive(setting: float | AutoParams, samples: int, p99_ms: float | None) -> Deadline:
    if not isinstance(setting, AutoParams):
        return Deadline(float(setting), "fixed")
    if samples < setting.min_samples or p99_ms is None:
        return Deadline(setting.fallback_s, "fallback", samples)
    p99_s = p99_ms / 1000.0
    seconds = min(max(p99_s * setting.factor, setting.floor_s), setting.ceiling_s)
    return Deadline(seconds, "auto", samples, p99_s)


def effective_deadlines(settings: DeadlineSettings, timings: PoolTimings,
                        pool_ttft_s: float | None = None) -> Deadlines:
    """The first-token deadline and stall timeout for an attempt on a pool with ``timings``;
    ``pool_ttft_s``: the pool's own first-token deadline, which wins when set."""
    ttft = (Deadline(pool_ttft_s, "pool") if pool_ttft_s is not None
            else _derive(settings.ttft, timings.ttft_samples, timings.ttft_p99_ms))
    return Deadlines(ttft, _derive(settings.stall, timings.gap_samples, timings.gap_p99_ms))


class GapMeter:
    """One stream's gaps between chunks, measured by its relay: ``tick(now)`` per chunk (two
    comparisons, no allocation), then ``max_ms`` and ``gaps`` once at the end for
    ``Observations.record_stream_gaps``.  ``now`` in seconds from the caller's clock."""

    __slots__ = ("_last", "max_s", "gaps")

    def __init__(self) -> None:
        self._last: float | None = None
        self.max_s = 0.0
        self.gaps = 0

    def tick(self, now: float) -> None:
        last, self._last = self._last, now
        if last is None:
            return
        self.gaps += 1
        if now - last > self.max_s:
            self.max_s = now - last

    @property
    def max_ms(self) -> float:
        return self.max_s * 1000.0
