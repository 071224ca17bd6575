"""Summary statistics over samples in seconds, reported in milliseconds."""
from __future__ import annotations

import math
from collections.abc import Sequence

CDF_POINTS = 101  # quantiles 0, 1, ..., 100 percent


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (``q`` in [0, 1]) of an already sorted non-empty sequence."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(value: float) -> float:
    return round(value * 1000.0, 4)


def summary(samples: Sequence[float]) -> dict:
    """``count, mean, min, p50, p90, p99, max`` in ms; values are ``None`` when there are no samples."""
    if not samples:
        return {"count": 0, "mean": None, "min": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "mean": _ms(math.fsum(ordered) / len(ordered)),
        "min": _ms(ordered[0]),
        "p50": _ms(quantile(ordered, 0.50)),
        "p90": _ms(quantile(ordered, 0.90)),
        "p99": _ms(quantile(ordered, 0.99)),
        "max": _ms(ordered[-1]),
    }


def cdf(samples: Sequence[float]) -> list[float]:
    """The value (ms) at each whole percent 0..100, or an empty list without samples."""
    if not samples:
        return []
    ordered = sorted(samples)
    return [_ms(quantile(ordered, i / (CDF_POINTS - 1))) for i in range(CDF_POINTS)]


def short(samples: Sequence[float]) -> dict:
    """``p50`` and ``p99`` only, for per-region tables."""
    full = summary(samples)
    return {"p50": full["p50"], "p99": full["p99"]}
