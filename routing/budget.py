"""A retry budget: extra attempts bounded to a fraction of recent client requests.

``record_request()`` once per client request; ``try_spend()`` before every extra attempt
(retry, failover, hedge, resume).  An extra attempt is allowed while the extra attempts
spent in the sliding window stay below

    max(ratio * requests in the window, min_per_s * window_s)

so a regional outage cannot multiply the load on the regions that are left, while a quiet
gateway may still retry ``min_per_s`` times a second.  Spent attempts count; refused ones
do not.

Counts live in a ring of buckets (one per second, at most 60, spanning ``window_s``), with
running totals: O(1) per call, amortised, however busy the gateway.  The window slides in
steps of one bucket: it covers between ``window_s - bucket`` and ``window_s`` seconds.
"""
from __future__ import annotations

import math
from collections.abc import Callable

Clock = Callable[[], float]
_MAX_BUCKETS = 60


class RetryBudget:
    __slots__ = ("ratio", "min_per_s", "window_s", "_clock", "_width", "_requests", "_retries",
                 "_head", "_req_total", "_ret_total", "spent_total", "denied_total", "requests_total")

    def __init__(self, ratio: float, min_per_s: float, window_s: float, clock: Clock) -> None:
        if not (ratio >= 0 and min_per_s >= 0 and window_s > 0):
            raise ValueError("need ratio >= 0, min_per_s >= 0 and window_s > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        n = min(_MAX_BUCKETS, max(1, math.ceil(window_s)))
        self._width = window_s / n
        self._requests = [0] * n
        self._retries = [0] * n
        self._head = math.floor(clock() / self._width)  # absolute number of the newest bucket
        self._req_total = 0  # sums over the ring
        self._ret_total = 0
        self.spent_total = 0
        self.denied_total = 0
        self.requests_total = 0

    def record_request(self) -> None:
        i = self._advance()
        self._requests[i] += 1
        self._req_total += 1
        self.requests_total += 1

    def try_spend(self) -> bool:
        """True (and counted) when one more extra attempt fits the budget."""
        i = self._advance()
        if self._ret_total < self._limit():
            self._retries[i] += 1
            self._ret_total += 1
            self.spent_total += 1
            return True
        self.denied_total += 1
        return False

    def _limit(self) -> float:
        return max(self.ratio * self._req_total, self.min_per_s * self.window_s)

    def _advance(self) -> int:
        """Expire buckets that slid out of the window; returns the index of the current one."""
        n = len(self._requests)
        bucket = math.floor(self._clock() / self._width)
        if bucket > self._head:  # a clock that goes back keeps using the newest bucket
            for b in range(self._head + 1, self._head + 1 + min(bucket - self._head, n)):
                j = b % n
                self._req_total -= self._requests[j]
                self._ret_total -= self._retries[j]
                self._requests[j] = self._retries[j] = 0
            self._head = bucket
        return self._head % n
