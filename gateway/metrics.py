"""The one catalogue of gateway metric names.  Every metric lives in a per-app registry
(no module globals), so two gateways can run in one process.

With ``infercdn gateway --workers N`` each serving process writes its values into the run's
prometheus-client multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor
before the worker starts) and /metrics, on any worker, renders the host's totals: counters and
histograms summed over every worker of the run (including workers that died and were restarted),
gauges as each gauge's ``multiprocess_mode`` says (in-flight requests summed over live workers,
health and ejection the worst live worker's view, latency the most recent)."""
from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.values import MutexValue

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(slots=True)
class GatewayMetrics:
    registry: CollectorRegistry
    requests: Counter
    attempts: Counter
    failovers: Counter
    request_seconds: Histogram
    ttft_seconds: Histogram
    tokens: Counter
    inflight: Gauge
    endpoint_healthy: Gauge
    endpoint_ejected: Gauge
    endpoint_latency_ms: Gauge
    transitions: Counter
    endpoint_drained: Gauge
    client_disconnects: Counter
    resumes: Counter
    shared_limit_errors: Counter
    discovery_errors: Counter
    registry_endpoints: Gauge
    registry_refused: Gauge
    canary_checks: Counter
    canary_requests: Counter
    canary_tokens: Counter
    endpoint_quarantined: Gauge
    tenant_tokens: Counter
    tenant_requests: Counter
    tenant_limited: Counter
    region_healthy: Gauge
    geoip_build: Gauge
    worker_restarts: Counter
    rejections: Counter

    children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)
    multiprocess_dir: str | None = None  # --workers: render the host's totals from this directory

    def of(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, cached: prometheus_client's lookup takes a lock and
        builds a key on every call, a cost paid several times per request otherwise.  Counters'
        ``inc`` and histograms' ``observe`` go straight to the child's values (see :class:`Child`)."""
        key = (id(metric), values)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = Child.of(metric.labels(*values))
        return child

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        host = CollectorRegistry()
        MultiProcessCollector(host, path=self.multiprocess_dir)
        return generate_latest(host)


class Child:
    """A labelled metric whose hot call skips prometheus_client's per-call checks (about half
    of its cost; several are made per request): ``inc`` of a counter adds to its value, and
    ``observe`` of a histogram finds its bucket by bisection, as the library's own methods do
    once their checks pass (the metric is labelled, the amount not negative).  Everything else
    goes to the child itself."""

    __slots__ = ("child",)

    def __init__(self, child: Any) -> None:
        self.child = child

    @staticmethod
    def of(child: Any) -> Any:
        if isinstance(child, Counter) and hasattr(getattr(child, "_value", None), "inc"):
            return DirectCounterChild(child) if _unlocked(child._value) else CounterChild(child)
        bounds, buckets = getattr(child, "_upper_bounds", None), getattr(child, "_buckets", None)
        if (isinstance(child, Histogram) and bounds and buckets and len(bounds) == len(buckets)
                and getattr(child, "_sum", None) is not None):
            direct = _unlocked(child._sum) and all(_unlocked(b) for b in buckets)
            return DirectHistogramChild(child) if direct else HistogramChild(child)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self.child, name)


class CounterChild(Child):
    __slots__ = ("value",)

    def __init__(self, child: Any) -> None:
        super().__init__(child)
        self.value = child._value

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            self.child.inc(amount)  # the library's error
        self.value.inc(amount)


class HistogramChild(Child):
    __slots__ = ("bounds", "buckets", "total")

    def __init__(self, child: Any) -> None:
        super().__init__(child)
        self.bounds, self.buckets, self.total = child._upper_bounds, child._buckets, child._sum

    def observe(self, amount: float) -> None:
        self.total.inc(amount)
        i = bisect_left(self.bounds, amount)  # the first bound >= amount (the last is +Inf)
        if i < len(self.buckets):
            self.buckets[i].inc(1)


def build_metrics() -> GatewayMetrics:
    r = CollectorRegistry(auto_describe=True)
    return GatewayMetrics(
        multiprocess_dir=os.environ.get(MULTIPROC_ENV) or None,  # read by prometheus_client at import too
        registry=r,
        requests=Counter("infercdn_requests", "Client requests by final status",
                         ["model", "region", "status"], registry=r),
        attempts=Counter("infercdn_upstream_attempts", "Upstream attempts by endpoint and outcome",
                         ["pool", "endpoint", "outcome"], registry=r),
        failovers=Counter("infercdn_failovers", "Requests served by other than their first candidate",
                          ["from_region", "to_region"], registry=r),
        request_seconds=Histogram("infercdn_request_duration_seconds", "Client request duration",
                                  ["model", "stream"], buckets=_LAT_BUCKETS, registry=r),
        ttft_seconds=Histogram("infercdn_time_to_first_token_seconds",
                               "Upstream time to the first token (or whole body) of the answering attempt",
                               ["region"], buckets=_LAT_BUCKETS, registry=r),
        tokens=Counter("infercdn_tokens", "Tokens reported by upstream usage", ["model", "kind"], registry=r),
        inflight=Gauge("infercdn_inflight_requests", "Requests in flight per endpoint", ["endpoint"], registry=r,
                       multiprocess_mode="livesum"),
        endpoint_healthy=Gauge("infercdn_endpoint_healthy", "1 if active health checks pass",
                               ["pool", "endpoint"], registry=r, multiprocess_mode="livemin"),
        endpoint_ejected=Gauge("infercdn_endpoint_ejected", "1 if ejected by outlier detection",
                               ["pool", "endpoint"], registry=r, multiprocess_mode="livemax"),
        endpoint_latency_ms=Gauge("infercdn_endpoint_latency_ms", "EWMA of measured latency to the endpoint",
                                  ["pool", "endpoint"], registry=r, multiprocess_mode="livemostrecent"),
        transitions=Counter("infercdn_endpoint_transitions", "Health/outlier state transitions",
                            ["endpoint", "kind", "to"], registry=r),
        endpoint_drained=Gauge("infercdn_endpoint_drained",
                               "1 if drained: by the operator (endpoint or pool), or announced by its health check",
                               ["pool", "endpoint"], registry=r, multiprocess_mode="livemax"),
        client_disconnects=Counter("infercdn_client_disconnects", "Clients that left before the end",
                                   ["model"], registry=r),
        resumes=Counter("infercdn_stream_resumes", "Streams continued on another endpoint after their first token",
                        ["strategy", "result"], registry=r),
        shared_limit_errors=Counter("infercdn_shared_limit_errors",
                                    "Redis calls of auth.shared that failed (the gateway's own limits decided)",
                                    registry=r),
        discovery_errors=Counter("infercdn_discovery_errors", "Failed reads of an endpoint source (the last "
                                 "endpoints found are kept)", ["source"], registry=r),
        registry_endpoints=Gauge("infercdn_registry_endpoints", "Self-registered endpoints that count, by provider",
                                 ["provider"], registry=r, multiprocess_mode="livemax"),
        registry_refused=Gauge("infercdn_registry_refused", "Announcements in the registry that do not count, by reason",
                               ["reason"], registry=r, multiprocess_mode="livemax"),
        canary_checks=Counter("infercdn_canary_checks", "Canary verifications by endpoint and result "
                              "(pass, fail, error, reference)", ["pool", "endpoint", "result"], registry=r),
        canary_requests=Counter("infercdn_canary_requests", "Requests the canary sent (apart from client traffic)",
                                ["endpoint"], registry=r),
        canary_tokens=Counter("infercdn_canary_tokens", "Tokens generated for the canary", ["endpoint"], registry=r),
        endpoint_quarantined=Gauge("infercdn_endpoint_quarantined", "1 while the canary holds the endpoint out "
                                   "(quarantined)", ["pool", "endpoint"],
                                   registry=r, multiprocess_mode="livemax"),
        # tenant labels are the operator's tenant names (and "anonymous"): a bounded set
        tenant_tokens=Counter("infercdn_tenant_tokens", "Tokens used per tenant (the pool's usage; estimates "
                              "where none was reported)", ["tenant", "kind"], registry=r),
        tenant_requests=Counter("infercdn_tenant_requests", "Requests admitted per tenant", ["tenant"], registry=r),
        tenant_limited=Counter("infercdn_tenant_rate_limited", "Requests refused by a tenant limit",
                               ["tenant", "limit"], registry=r),
        region_healthy=Gauge("infercdn_region_healthy_endpoints",
                             "Endpoints per region passing health checks and not ejected", ["region"], registry=r,
                             multiprocess_mode="livemax"),
        geoip_build=Gauge("infercdn_geoip_build_timestamp_seconds",
                          "Build time of the GeoIP database in use (Unix seconds; absent without a database)",
                          registry=r, multiprocess_mode="max"),
        worker_restarts=Counter("infercdn_worker_restarts", "Serving processes of --workers started again after "
                                "they died", ["worker"], registry=r),
        rejections=Counter("infercdn_rejected_requests", "Requests the gateway answered itself, by status and error code",
                           ["status", "code"], registry=r),
    )


def _unlocked(value: Any) -> bool:
    """A single process's value (prometheus_client's ``MutexValue``, not the multiprocess mode's
    file-backed one): its lock only orders writers of other threads, and the gateway's metrics
    are written by its event loop's thread alone (no module of gateway/ starts a thread), so
    the hot calls add to it directly, as the locked ``inc`` would."""
    return type(value) is MutexValue and isinstance(getattr(value, "_value", None), float)


class DirectCounterChild(CounterChild):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            self.child.inc(amount)  # the library's error
        self.value._value += amount


class DirectHistogramChild(HistogramChild):
    __slots__ = ()

    def observe(self, amount: float) -> None:
        self.total._value += amount
        i = bisect_left(self.bounds, amount)
        if i < len(self.buckets):
            self.buckets[i]._value += 1.0
