"""Live traffic per region for the fleet page: requests, tokens, errors, failovers and resumes
of the last minute, in one-second buckets.

The completion handler records each request when it ends (gateway/handlers.py), from what its ``Exchange`` learnt
(the region that served it, the attempts that failed, the usage); requests refused before a
plan (auth, bad input) have no region and are not counted here (``/metrics`` has them).
Memory is bounded: per region at most ``WINDOW_S`` buckets, and regions come from the
config (a request names the region of a candidate it was planned on).  Under ``--workers N``
each worker shares its window (``window``) and adds the others' (``peers``) to what it shows:
``gateway/host_share.py``."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


from gateway.forward.exchange import Exchange

WINDOW_S = 60  # totals cover the last minute
RATE_S = 10  # requests/s and tokens/s: the mean over the last 10 s


@dataclass(slots=True)
class _Bucket:
    second: int
    requests: int = 0
    errors: int = 0  # answered with other than 200 (or a stream that ended in an error)
    tokens: int = 0  # completion tokens, as the pool reported them
    failed_attempts: int = 0  # attempts here that failed (before or after the first token)
    failovers: int = 0  # requests served here after a failed attempt elsewhere or here
    resumes: int = 0  # streams continued here after their first token was sent


class Traffic:
    """Per-region one-second buckets over the last ``WINDOW_S`` seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._regions: dict[str, deque[_Bucket]] = {}
        # under --workers: the other workers' windows (gateway/host_share.py), added to ours
        self.peers: dict[int, dict[str, list[list[int]]]] = {}

    def window(self) -> dict[str, list[list[int]]]:
        """This process's buckets of the last minute, per region, as lists of ints (for peers)."""
        now = int(self._clock())
        return {region: [[b.second, b.requests, b.errors, b.tokens, b.failed_attempts, b.failovers, b.resumes]
                         for b in ring if b.second > now - WINDOW_S]
                for region, ring in self._regions.items() if ring and ring[-1].second > now - WINDOW_S}

    def _merged(self) -> dict[str, list[_Bucket]]:
        """Ours plus the peers' buckets (each peer's seconds are the host's monotonic seconds)."""
        if not self.peers:
            return {region: list(ring) for region, ring in self._regions.items()}
        out: dict[str, dict[int, _Bucket]] = {}
        rows = [(r, [b.second, b.requests, b.errors, b.tokens, b.failed_attempts, b.failovers, b.resumes])
                for r, ring in self._regions.items() for b in ring]
        rows += [(r, b) for window in self.peers.values() for r, bs in window.items() for b in bs]
        for region, (second, *counts) in rows:
            b = out.setdefault(region, {}).setdefault(second, _Bucket(second))
            b.requests += counts[0]
            b.errors += counts[1]
            b.tokens += counts[2]
            b.failed_attempts += counts[3]
            b.failovers += counts[4]
            b.resumes += counts[5]
        return {region: list(per.values()) for region, per in out.items()}

    def _bucket(self, region: str) -> _Bucket:
        second = int(self._clock())
        ring = self._regions.setdefault(region, deque())
        if not ring or ring[-1].second != second:
            ring.append(_Bucket(second))
            while ring[0].second <= second - WINDOW_S:
                ring.popleft()
        return ring[-1]

    def record(self, region: str, *, ok: bool, tokens: int = 0, failover: bool = False,
               resumes: int = 0) -> None:
        b = self._bucket(region)
        b.requests += 1
        b.errors += 0 if ok else 1
        b.tokens += tokens
        b.failovers += 1 if failover else 0
        b.resumes += resumes

    def failed_attempt(self, region: str) -> None:
        self._bucket(region).failed_attempts += 1

    def snapshot(self, regions: list[str]) -> dict[str, dict[str, Any]]:
        """Per region (every name in ``regions``, and any other seen): rates over the last
        ``RATE_S`` seconds, totals over the last minute and requests of each of its seconds
        (oldest first) for a sparkline."""
        now = int(self._clock())
        out = {}
        merged = self._merged()
        for region in dict.fromkeys([*regions, *merged]):
            recent = [b for b in merged.get(region, ()) if b.second > now - WINDOW_S]
            fresh = [b for b in recent if b.second > now - RATE_S]
            per_second = {b.second: b.requests for b in recent}
            out[region] = {
                "requests_per_s": round(sum(b.requests for b in fresh) / RATE_S, 2),
                "tokens_per_s": round(sum(b.tokens for b in fresh) / RATE_S, 1),
                "requests_1m": sum(b.requests for b in recent),
                "errors_1m": sum(b.errors for b in recent),
                "failed_attempts_1m": sum(b.failed_attempts for b in recent),
                "failovers_1m": sum(b.failovers for b in recent),
                "resumes_1m": sum(b.resumes for b in recent),
                "series": [per_second.get(s, 0) for s in range(now - WINDOW_S + 1, now + 1)],
            }
        return out


def record_exchange(traffic: Traffic, ex: Exchange) -> None:
    """One finished request: counted in the region that served it (or, when none did, where
    its last attempt failed); each failed attempt counted where it failed."""
    for tried in ex.tried:
        traffic.failed_attempt(tried.cand.region)
    served = ex.served_by
    region = served.region if served is not None else (ex.tried[-1].cand.region if ex.tried else None)
    if region is None:
        return  # no candidate was ever tried (no eligible endpoint): nothing regional to count
    completion = (ex.usage or {}).get("completion_tokens")
    traffic.record(region, ok=ex.status == "200", tokens=completion if isinstance(completion, int) else 0,
                   failover=served is not None and bool(ex.tried), resumes=ex.resumes)
