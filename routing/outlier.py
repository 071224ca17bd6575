"""Passive outlier detection, after Envoy's: outcomes of real requests eject an endpoint.

* ``consecutive_failures`` failures in a row (``Outcome.is_failure``) eject the endpoint for
  ``base_ejection_s * 2 ** (times_ejected - 1)``, capped at ``max_ejection_s``.
* Each ``decay_s`` of quiet (no failure, not ejected) forgets one past ejection.
* At most ``max_ejected_percent`` of a pool's endpoints are ejected at once (at least one
  when the percentage is > 0); beyond that the endpoint stays in, still counted.
* Ejection ends by itself when the clock passes ``ejected_until`` (noticed lazily).
* A decaying error rate per endpoint feeds the planner's penalty: failures over requests,
  both decayed with ``error_half_life_s``, divided by at least ``error_min_volume`` so one
  failure on a quiet endpoint is not a 100 % error rate.
Client errors and cancellations neither count as failures nor break a failure streak.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from routing.health import TransitionCallback
from routing.outcome import Outcome

Clock = Callable[[], float]
_NEUTRAL = (Outcome.CLIENT_ERROR, Outcome.CANCELLED)


@dataclass(frozen=True, slots=True)
class OutlierParams:
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_percent: float = 50.0
    decay_s: float = 60.0
    error_half_life_s: float = 30.0
    error_min_volume: float = 5.0


class DecayingErrorRate:
    """Exponentially decayed failure and request counts; the rate is their ratio, and 0 below
    ``min_volume`` requests (as Envoy's success-rate detection: too little evidence).  One
    failure must not push a recovered endpoint down the ranking where no success can reach
    it to dilute the rate."""
    __slots__ = ("half_life_s", "min_volume", "_failures", "_total", "_at")

    def __init__(self, half_life_s: float, min_volume: float) -> None:
        self.half_life_s = half_life_s
        self.min_volume = max(min_volume, 1e-9)
        self._failures = 0.0
        self._total = 0.0
        self._at = 0.0

    def _decay(self, now: float) -> None:
        if self._total and now > self._at:
            k = 0.5 ** ((now - self._at) / self.half_life_s)
            self._failures *= k
            self._total *= k
        self._at = max(self._at, now)

    def record(self, failed: bool, now: float) -> None:
        self._decay(now)
        self._total += 1.0
        if failed:
            self._failures += 1.0

    def value(self, now: float) -> float:
        if not self._total:
            return 0.0
        k: float = 0.5 ** (max(0.0, now - self._at) / self.half_life_s)
        total = self._total * k
        return 0.0 if total < self.min_volume else (self._failures * k) / total


class EndpointOutlier:
    __slots__ = ("pool", "consecutive_failures", "times_ejected", "ejected_until", "decay_ref", "errors")

    def __init__(self, pool: str, params: OutlierParams) -> None:
        self.pool = pool
        self.consecutive_failures = 0
        self.times_ejected = 0
        self.ejected_until: float | None = None
        self.decay_ref = 0.0  # quiet time is measured from here
        self.errors = DecayingErrorRate(params.error_half_life_s, params.error_min_volume)


class OutlierDetector:
    def __init__(self, params: OutlierParams, clock: Clock,
                 on_transition: TransitionCallback | None = None) -> None:
        self.params = params
        self._clock = clock
        self._on_transition = on_transition
        self._eps: dict[str, EndpointOutlier] = {}
        self._pools: dict[str, tuple[str, ...]] = {}

    def sync(self, pools: Mapping[str, Sequence[str]]) -> None:
        """Adopt a new pool -> endpoint ids layout; remaining endpoints keep their state."""
        old = self._eps
        self._eps = {}
        self._pools = {p: tuple(ids) for p, ids in pools.items()}
        for pool, ids in self._pools.items():
            for eid in ids:
                st = old.get(eid) or EndpointOutlier(pool, self.params)
                st.pool = pool
                self._eps[eid] = st

    def state(self, endpoint_id: str) -> EndpointOutlier | None:
        return self._eps.get(endpoint_id)

    def record(self, endpoint_id: str, outcome: Outcome) -> bool:
        """Feed one outcome; returns True when it ejected the endpoint.  Unknown ids are ignored."""
        st = self._eps.get(endpoint_id)
        if st is None or outcome in _NEUTRAL:
            return False
        now = self._clock()
        ejected = self.is_ejected(endpoint_id)
        failed = outcome.is_failure
        st.errors.record(failed, now)
        self._decay(st, now)
        if not failed:
            st.consecutive_failures = 0
            return False
        st.decay_ref = max(st.decay_ref, now)
        if ejected:
            return False
        st.consecutive_failures += 1
        if st.consecutive_failures < self.params.consecutive_failures or not self._may_eject(st.pool, now):
            return False
        self._eject(endpoint_id, st, now)
        return True

    def is_ejected(self, endpoint_id: str) -> bool:
        st = self._eps.get(endpoint_id)
        if st is None or st.ejected_until is None:
            return False
        if self._clock() < st.ejected_until:
            return True
        st.ejected_until = None
        self._notify(endpoint_id, "ejected", "active")
        return False

    def error_rate(self, endpoint_id: str) -> float:
        st = self._eps.get(endpoint_id)
        return 0.0 if st is None else st.errors.value(self._clock())

    def ejected_in_pool(self, pool: str) -> int:
        return sum(1 for eid in self._pools.get(pool, ()) if self.is_ejected(eid))

    def times_ejected(self, endpoint_id: str) -> int:
        st = self._eps.get(endpoint_id)
        if st is None:
            return 0
        self.is_ejected(endpoint_id)
        self._decay(st, self._clock())
        return st.times_ejected

    def _may_eject(self, pool: str, now: float) -> bool:
        pct = self.params.max_ejected_percent
        if pct <= 0:
            return False
        limit = max(1, math.floor(len(self._pools.get(pool, ())) * pct / 100.0 + 1e-9))
        return self.ejected_in_pool(pool) + 1 <= limit

    def _eject(self, endpoint_id: str, st: EndpointOutlier, now: float) -> None:
        p = self.params
        st.times_ejected += 1
        duration = min(p.max_ejection_s, p.base_ejection_s * 2 ** (st.times_ejected - 1))
        st.ejected_until = now + duration
        st.decay_ref = st.ejected_until
        st.consecutive_failures = 0
        self._notify(endpoint_id, "active", "ejected")

    def _decay(self, st: EndpointOutlier, now: float) -> None:
        if st.times_ejected and st.ejected_until is None and now >= st.decay_ref + self.params.decay_s:
            steps = int((now - st.decay_ref) // self.params.decay_s)
            st.times_ejected = max(0, st.times_ejected - steps)
            st.decay_ref += steps * self.params.decay_s

    def _notify(self, endpoint_id: str, old: str, new: str) -> None:
        if self._on_transition is not None:
            self._on_transition(endpoint_id, "outlier", old, new)
