"""The results document (schema ``infercdn.loadtest/1``) built from a run's raw data.

Keys are stable: new keys may be added within a schema version, none removed or renamed.
Latencies are milliseconds; ``None`` where a figure has no samples.  See docs/loadtest.md.
"""
from __future__ import annotations

import math
import platform
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone

import orjson

from .engine import RunData
from .protocol import Result
from .stats import CDF_POINTS, cdf, short, summary

SCHEMA = "infercdn.loadtest/1"
NO_REGION = "(none)"
LATE_THRESHOLDS_MS = (1, 10, 100)
SATURATED_CPU = 0.9
SATURATED_LAG_MS = 10.0


def build_report(data: RunData) -> dict:
    results = sorted(data.results, key=lambda r: r.index)
    ok = [r for r in results if r.ok]
    wall = max(data.wall_s, 1e-9)
    return {
        "schema": SCHEMA,
        "generated_at": datetime.fromtimestamp(data.started_at, timezone.utc).isoformat(),
        "model": data.model,
        "config": data.config.public(),
        "totals": _totals(results, ok, wall),
        "latency_ms": {name: summary(s) for name, s in _latency_samples(ok).items()},
        "cdf_ms": {"percents": list(range(CDF_POINTS)),
                   **{name: cdf(s) for name, s in _latency_samples(ok).items()}},
        "errors": dict(sorted(Counter(r.error for r in results if _is_error(r)).items())),
        "by_client_region": _by(results, lambda r: r.client),
        "by_serving_region": _by(results, lambda r: r.region or NO_REGION),
        "routing_matrix": _matrix(results),
        "failovers": _failovers(results),
        "timeline": _timeline(results, wall),
        "generator": _generator(data, wall),
    }


def write_json(report: dict, path: str) -> None:
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def _is_error(r: Result) -> bool:
    return not r.ok and r.error != "cancelled"


def _latency_samples(ok: list[Result]) -> dict[str, list[float]]:
    return {
        "ttft": [r.ttft for r in ok if r.ttft is not None],
        "itl": [gap for r in ok for gap in r.itl],
        "e2e": [r.e2e for r in ok if r.e2e is not None],
    }


def _totals(results: list[Result], ok: list[Result], wall: float) -> dict:
    out_tokens = sum(r.completion_tokens for r in ok)
    errors = sum(1 for r in results if _is_error(r))
    finished = len(results) - sum(1 for r in results if r.error == "cancelled")
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": errors,
        "cancelled": len(results) - len(ok) - errors,
        "error_rate": round(errors / finished, 6) if finished else 0.0,
        "duration_s": round(wall, 4),
        "requests_per_s": round(len(ok) / wall, 3),
        "input_tokens": sum(r.prompt_tokens for r in ok),
        "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / wall, 3),
        "failovers": sum(1 for r in results if r.attempts > 1),
    }


def _by(results: Iterable[Result], key) -> dict[str, dict]:  # noqa: ANN001 - a small key function
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    return {name: _group(rs) for name, rs in sorted(groups.items())}


def _group(rs: list[Result]) -> dict:
    ok = [r for r in rs if r.ok]
    return {
        "requests": len(rs),
        "ok": len(ok),
        "errors": sum(1 for r in rs if _is_error(r)),
        "output_tokens": sum(r.completion_tokens for r in ok),
        "failovers": sum(1 for r in rs if r.attempts > 1),
        "ttft_ms": short([r.ttft for r in ok if r.ttft is not None]),
        "e2e_ms": short([r.e2e for r in ok if r.e2e is not None]),
    }


def _matrix(results: list[Result]) -> dict:
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        counts[r.client][r.region or NO_REGION] += 1
    serving = sorted({s for row in counts.values() for s in row})
    return {
        "client_regions": sorted(counts),
        "serving_regions": serving,
        "counts": {c: {s: counts[c][s] for s in serving} for c in sorted(counts)},
    }


def _failovers(results: list[Result]) -> dict:
    failed_over = [r for r in results if r.attempts > 1]
    return {
        "requests": len(failed_over),
        "attempts": {str(k): v for k, v in sorted(Counter(r.attempts for r in results).items())},
        "by_serving_region": dict(sorted(Counter(r.region or NO_REGION for r in failed_over).items())),
    }


def _timeline(results: list[Result], wall: float) -> list[dict]:
    """Per whole second of the run, by completion time: requests finished, ok, errors, tokens."""
    seconds = max(1, math.ceil(wall))
    rows = [{"t": t, "requests": 0, "ok": 0, "errors": 0, "tokens": 0} for t in range(seconds)]
    for r in results:
        row = rows[min(seconds - 1, max(0, int(r.end)))]
        row["requests"] += 1
        if r.ok:
            row["ok"] += 1
            row["tokens"] += r.completion_tokens
        elif _is_error(r):
            row["errors"] += 1
    return rows


def _generator(data: RunData, wall: float) -> dict:
    lag = summary(data.schedule_lags)
    loop = summary(data.loop_lags)
    cpu = data.cpu_user_s + data.cpu_sys_s
    late = {f"over_{t}ms": sum(1 for x in data.schedule_lags if x * 1000 > t) for t in LATE_THRESHOLDS_MS}
    worst_lag = max((v for v in (lag["p99"], loop["p99"]) if v is not None), default=0.0)
    return {
        "schedule_lag_ms": lag,
        "late_requests": late,
        "loop_lag_ms": loop,
        "cpu_user_s": round(data.cpu_user_s, 4),
        "cpu_sys_s": round(data.cpu_sys_s, 4),
        "cpu_util": round(cpu / wall, 4),
        "wall_s": round(wall, 4),
        "saturated": cpu / wall > SATURATED_CPU or worst_lag > SATURATED_LAG_MS,
        "event_loop": data.event_loop,
        "python": platform.python_version(),
        "platform": sys.platform,
    }
