"""Everything the gateway has learned about each endpoint, in one store keyed by endpoint id.

Health (active probes), latency (EWMA of probe RTTs and time to first byte), passive outlier
state, the circuit breaker, throttling (an upstream's Retry-After, honoured across requests; of
the whole endpoint, or of one model it serves: ``throttle_model``),
in-flight counts and the load each vLLM endpoint reports; per pool, a window of recent times
to first token (its p95 sets the hedging threshold) and of each recent stream's longest gap
between chunks; ``pool_timings`` hands both to ``routing.deadlines`` (adaptive deadlines).

Eligibility (``route_inputs``' first field), first reason wins: "unhealthy", "ejected",
"breaker_open", "breaker_half_open" (every trial slot taken), "throttled"; before all of them
a hold set from outside: "quarantined" (the canary caught it) or "canary_pending" (not checked
yet).  Holds outlive ``sync``: an endpoint that leaves and comes back stays held.  ``acquire`` and
``release`` wrap every attempt: they count in-flight requests and take and free the
breaker's trial slots when it is half-open.  ``sync(topology)`` after a reload adds new
endpoints, drops removed ones and keeps the state of those that remain.

"draining" overrides every other reason: an operator drained the endpoint (``drain``), or
its health check answered 503 "draining", as the vLLM launcher does while it stops.  A
draining endpoint gets no new requests, not even in panic; those in flight finish.  Operator
drains (of endpoints, and of whole pools: ``drain_pool``, which the planner reads) are kept
across reloads for the endpoints and pools that remain, and forgotten with those that leave.

Unknown endpoint ids never raise: records about them are ignored (a request that started on
an older topology may finish after its endpoint was removed), and ``view`` answers with a
neutral view (healthy, nothing measured).  Reported load older than ``load_stale_s`` counts
as unknown (None), never as idle.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from routing.breaker import BreakerParams, CircuitBreaker
from routing.deadlines import QUANTILE, PoolTimings
from routing.health import HealthCheck, HealthState, TransitionCallback
from routing.latency import LatencyEwma, QuantileWindow
from routing.outcome import Outcome
from routing.outlier import EndpointOutlier, OutlierDetector, OutlierParams
from routing.topology import Topology

Clock = Callable[[], float]
# (exclusion reason or None, latency_ms, inflight, running, waiting, kv_usage, error_rate)
RouteInputs = tuple[str | None, float | None, int, int | None, int | None, float | None, float]


@dataclass(frozen=True, slots=True)
class ObservationParams:
    half_life_s: float = 10.0  # latency EWMA
    rise: int = 2  # probe successes to turn healthy again
    fall: int = 2  # probe failures to turn unhealthy
    consecutive_failures: int = 5  # request failures in a row that eject
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_percent: float = 50.0  # of one pool
    load_stale_s: float = 10.0
    ejection_decay_s: float = 60.0  # quiet time that forgets one past ejection
    error_half_life_s: float = 30.0
    error_min_volume: float = 5.0
    breaker: BreakerParams = field(default_factory=BreakerParams)
    max_throttle_s: float = 300.0  # cap on one Retry-After, so a bad header cannot bench an endpoint for a day
    ttft_window: int = 256  # recent time-to-first-token samples kept per pool
    ttft_min_samples: int = 20  # fewer: no quantile
    gap_window: int = 256  # recent streams' longest inter-chunk gaps kept per pool

    def outlier(self) -> OutlierParams:
        return OutlierParams(self.consecutive_failures, self.base_ejection_s, self.max_ejection_s,
                             self.max_ejected_percent, self.ejection_decay_s,
                             self.error_half_life_s, self.error_min_volume)


@dataclass(frozen=True, slots=True)
class EndpointView:
    healthy: bool
    ejected: bool
    ejected_until: float | None
    latency_ms: float | None
    inflight: int
    running: int | None
    waiting: int | None
    kv_usage: float | None  # fraction 0..1, as vLLM's kv_cache_usage_perc
    load_fresh: bool
    consecutive_failures: int
    error_rate: float
    breaker: str = "closed"  # "closed" | "open" | "half_open"
    throttled_until: float | None = None  # clock() time until which the upstream asked for no requests
    drained: bool = False  # by the operator (admin API)
    probe_draining: bool = False  # its health check answered "draining"
    hold: str | None = None  # held out of routing: "quarantined" or "canary_pending" (the canary)


_UNHEALTHY = HealthState.UNHEALTHY
_NEUTRAL_VIEW = EndpointView(True, False, None, None, 0, None, None, None, False, 0, 0.0)


class _EndpointState:
    __slots__ = ("health", "latency", "breaker", "throttled_until", "inflight", "running", "waiting",
                 "kv_usage", "load_at", "outlier", "drained", "probe_draining")

    def __init__(self, health: HealthCheck, latency: LatencyEwma, breaker: CircuitBreaker) -> None:
        self.health = health
        self.latency = latency
        self.breaker = breaker
        self.throttled_until: float | None = None
        self.inflight = 0
        self.running: int | None = None
        self.waiting: int | None = None
        self.kv_usage: float | None = None
        self.load_at: float | None = None
        self.outlier: EndpointOutlier | None = None  # the detector's record, linked by sync()
        self.drained = False
        self.probe_draining = False


class Observations:
    def __init__(self, params: ObservationParams, clock: Clock,
                 on_transition: TransitionCallback | None = None) -> None:
        self.params = params
        self._clock = clock
        self._on_transition = on_transition
        self._eps: dict[str, _EndpointState] = {}
        self._ttft: dict[str, QuantileWindow] = {}  # pool name -> recent times to first token
        self._gaps: dict[str, QuantileWindow] = {}  # pool name -> recent streams' longest gaps
        self._pools: frozenset[str] = frozenset()  # names of the topology's pools
        self.drained_pools: frozenset[str] = frozenset()  # drained by the operator
        self.outliers = OutlierDetector(params.outlier(), clock, on_transition)
        self._holds: dict[str, str] = {}  # endpoint id -> "quarantined" | "canary_pending"
        self._model_throttles: dict[tuple[str, str], float] = {}  # (endpoint id, upstream model) -> until

    def hold(self, endpoint_id: str, reason: str) -> None:
        """No traffic for ``endpoint_id`` (not even in panic) until ``unhold``."""
        self._holds[endpoint_id] = reason

    def unhold(self, endpoint_id: str) -> str | None:
        """Lift a hold; returns the reason it had, or None."""
        return self._holds.pop(endpoint_id, None)

    def held(self, endpoint_id: str) -> str | None:
        return self._holds.get(endpoint_id)

    def set_params(self, params: ObservationParams) -> None:
        """New settings (a reload) for every endpoint, its state kept: health rise/fall, the
        latency half-life, outlier detection, the breaker, load staleness, the throttle cap."""
        self.params = params
        self.outliers.params = params.outlier()
        for st in self._eps.values():
            st.health.rise, st.health.fall = params.rise, params.fall
            st.latency.half_life_s = params.half_life_s
            st.breaker.params = params.breaker

    def sync(self, topology: Topology) -> None:
        old, p = self._eps, self.params
        self._eps = {}
        for pool in topology.pools:
            for ep in pool.endpoints:
                self._eps[ep.id] = old.get(ep.id) or _EndpointState(
                    HealthCheck(ep.id, p.rise, p.fall, self._on_transition),
                    LatencyEwma(p.half_life_s, self._clock),
                    CircuitBreaker(ep.id, p.breaker, self._clock, self._on_transition))
        old_ttft, self._ttft = self._ttft, {}
        old_gaps, self._gaps = self._gaps, {}
        for pool in topology.pools:
            self._ttft[pool.name] = old_ttft.get(pool.name) or QuantileWindow(p.ttft_window, p.ttft_min_samples)
            self._gaps[pool.name] = old_gaps.get(pool.name) or QuantileWindow(p.gap_window, 1)
        self.outliers.sync({pool.name: [e.id for e in pool.endpoints] for pool in topology.pools})
        for eid, st in self._eps.items():
            st.outlier = self.outliers.state(eid)
        self._pools = frozenset(pool.name for pool in topology.pools)
        self._model_throttles = {k: v for k, v in self._model_throttles.items() if k[0] in self._eps}
        self.drained_pools = self.drained_pools & self._pools

    def endpoint_ids(self) -> list[str]:
        return list(self._eps)

    def record_probe(self, endpoint_id: str, ok: bool, rtt_ms: float | None = None,
                     draining: bool = False) -> None:
        """One health probe; ``draining``: it failed saying the endpoint is draining."""
        st = self._eps.get(endpoint_id)
        if st is None:
            return
        st.health.record(ok)
        st.probe_draining = draining and not ok
        if ok and rtt_ms is not None:
            st.latency.update(rtt_ms)

    def record_outcome(self, endpoint_id: str, outcome: Outcome, ttfb_ms: float | None = None) -> None:
        """One request attempt's outcome; ``ttfb_ms`` (time to response headers) feeds latency."""
        st = self._eps.get(endpoint_id)
        if st is None:
            return
        self.outliers.record(endpoint_id, outcome)
        st.breaker.record(outcome)
        if ttfb_ms is not None and outcome is Outcome.SUCCESS:
            st.latency.update(ttfb_ms)

    def record_load(self, endpoint_id: str, running: int | None, waiting: int | None,
                    kv_usage: float | None) -> None:
        """Load scraped from the endpoint's /metrics; all None = the scrape told nothing."""
        st = self._eps.get(endpoint_id)
        if st is None:
            return
        st.running, st.waiting, st.kv_usage = running, waiting, kv_usage
        known = running is not None or waiting is not None or kv_usage is not None
        st.load_at = self._clock() if known else None

    def acquire(self, endpoint_id: str) -> None:
        """An attempt starts: counts in flight; takes a trial slot when the breaker is half-open."""
        st = self._eps.get(endpoint_id)
        if st is not None:
            st.inflight += 1
            st.breaker.acquire()

    def release(self, endpoint_id: str) -> None:
        """An attempt ended (whatever its outcome): undoes ``acquire``."""
        st = self._eps.get(endpoint_id)
        if st is not None and st.inflight > 0:
            st.inflight -= 1
            st.breaker.release()

    def throttle(self, endpoint_id: str, seconds: float) -> None:
        """The upstream asked for no requests for ``seconds`` (Retry-After): ineligible until
        then (capped at ``max_throttle_s``; a longer throttle already set is kept)."""
        st = self._eps.get(endpoint_id)
        if st is None or not seconds > 0:
            return
        until = self._clock() + min(seconds, self.params.max_throttle_s)
        if st.throttled_until is None or until > st.throttled_until:
            st.throttled_until = until

    def throttle_model(self, endpoint_id: str, model: str, seconds: float) -> None:
        """Like ``throttle``, for one model the endpoint serves (``model``: the upstream name, as
        the endpoint knows it): its other models keep their traffic."""
        if endpoint_id not in self._eps or not seconds > 0:
            return
        until = self._clock() + min(seconds, self.params.max_throttle_s)
        key = (endpoint_id, model)
        if until > self._model_throttles.get(key, 0.0):
            self._model_throttles[key] = until

    @property
    def has_model_throttles(self) -> bool:
        """Whether any model of any endpoint is throttled (the planner checks per model only then)."""
        return bool(self._model_throttles)

    def model_throttled(self, endpoint_id: str, model: str) -> bool:
        """Whether ``model`` on ``endpoint_id`` is throttled now (an expired throttle is forgotten)."""
        until = self._model_throttles.get((endpoint_id, model))
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._model_throttles[(endpoint_id, model)]
        return False

    def drain(self, endpoint_id: str, drained: bool = True) -> bool:
        """The operator drains (or, with ``drained=False``, undrains) an endpoint; False if unknown."""
        st = self._eps.get(endpoint_id)
        if st is None:
            return False
        st.drained = drained
        return True

    def drain_pool(self, pool_name: str, drained: bool = True) -> bool:
        """The operator drains (or undrains) every endpoint of a pool; False if unknown."""
        if pool_name not in self._pools:
            return False
        one = frozenset({pool_name})
        self.drained_pools = self.drained_pools | one if drained else self.drained_pools - one
        return True

    def record_ttft(self, endpoint_id: str, ms: float) -> None:
        """Time to first token of a successful attempt, into its pool's window."""
        o = self.outliers.state(endpoint_id)
        window = self._ttft.get(o.pool) if o is not None else None
        if window is not None and math.isfinite(ms):
            window.add(ms)

    def ttft_quantile(self, pool_name: str, q: float) -> float | None:
        """The pool's recent time to first token at quantile ``q`` (nearest rank), in ms; None
        with fewer than ``ttft_min_samples`` samples or for an unknown pool."""
        window = self._ttft.get(pool_name)
        return window.quantile(q) if window is not None else None

    def record_stream_gaps(self, endpoint_id: str, max_gap_ms: float, gaps: int) -> None:
        """Once per stream that ended well: its longest gap between chunks (``GapMeter``), into
        its pool's window; streams with no gap (one chunk) tell nothing and are skipped."""
        o = self.outliers.state(endpoint_id)
        window = self._gaps.get(o.pool) if o is not None and gaps > 0 else None
        if window is not None and math.isfinite(max_gap_ms):
            window.add(max_gap_ms)

    def pool_timings(self, pool_name: str) -> PoolTimings:
        """The pool's sample counts and p99s of time to first token and of streams' longest
        gaps (for ``routing.deadlines.effective_deadlines``); empty for an unknown pool."""
        ttft, gaps = self._ttft.get(pool_name), self._gaps.get(pool_name)
        if ttft is None or gaps is None:
            return PoolTimings()
        return PoolTimings(len(ttft), ttft.quantile(QUANTILE, 1), len(gaps), gaps.quantile(QUANTILE, 1))

    def _throttled(self, st: _EndpointState, now: float) -> bool:
        until = st.throttled_until
        if until is None:
            return False
        if now < until:
            return True
        st.throttled_until = None
        return False

    def _fresh(self, st: _EndpointState) -> bool:
        return st.load_at is not None and self._clock() - st.load_at <= self.params.load_stale_s

    def route_inputs(self, endpoint_id: str) -> RouteInputs:
        """The planner's hot path: what ``view`` says, as a plain tuple, with one clock read."""
        st = self._eps.get(endpoint_id)
        if st is None:
            return (self._holds.get(endpoint_id), None, 0, None, None, None, 0.0)
        now = self._clock()
        o = st.outlier
        reason: str | None = self._holds.get(endpoint_id) if self._holds else None
        if reason is not None:
            pass
        elif st.health.state is _UNHEALTHY:
            reason = "unhealthy"
        elif o is not None and o.ejected_until is not None:
            if now < o.ejected_until:
                reason = "ejected"
            else:
                self.outliers.is_ejected(endpoint_id)  # notices the end of the ejection, reports it
        if st.drained or st.probe_draining:
            reason = "draining"  # over any other reason: never tried, not even in panic
        if reason is None and not st.breaker.closed:
            reason = st.breaker.reason()
        if reason is None and st.throttled_until is not None and self._throttled(st, now):
            reason = "throttled"
        err = o.errors.value(now) if o is not None else 0.0
        lat = st.latency.value()
        if st.load_at is not None and now - st.load_at <= self.params.load_stale_s:
            return (reason, lat, st.inflight, st.running, st.waiting, st.kv_usage, err)
        return (reason, lat, st.inflight, None, None, None, err)

    def view(self, endpoint_id: str) -> EndpointView:
        st = self._eps.get(endpoint_id)
        o = self.outliers.state(endpoint_id)
        if st is None or o is None:
            return replace(_NEUTRAL_VIEW, hold=self._holds.get(endpoint_id)) if endpoint_id in self._holds else _NEUTRAL_VIEW
        ejected = self.outliers.is_ejected(endpoint_id)
        fresh = self._fresh(st)
        return EndpointView(
            healthy=st.health.healthy, ejected=ejected, ejected_until=o.ejected_until if ejected else None,
            latency_ms=st.latency.value(), inflight=st.inflight,
            running=st.running if fresh else None, waiting=st.waiting if fresh else None,
            kv_usage=st.kv_usage if fresh else None, load_fresh=fresh,
            consecutive_failures=o.consecutive_failures, error_rate=self.outliers.error_rate(endpoint_id),
            breaker=st.breaker.state.value,
            throttled_until=st.throttled_until if self._throttled(st, self._clock()) else None,
            drained=st.drained, probe_draining=st.probe_draining, hold=self._holds.get(endpoint_id))

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state of every endpoint, for the admin API."""
        out: dict[str, Any] = {}
        for eid, st in self._eps.items():
            o = self.outliers.state(eid)
            d = asdict(self.view(eid))
            d["health"] = st.health.state.value
            d["pool"] = o.pool if o is not None else None
            d["times_ejected"] = self.outliers.times_ejected(eid)
            d["latency_samples"] = st.latency.samples
            d["breaker_trials"] = st.breaker.trials
            d["hold"] = self._holds.get(eid)
            d["throttled_models"] = {m: until for (e, m), until in self._model_throttles.items()
                                     if e == eid and self.model_throttled(e, m)}
            out[eid] = d
        return out
