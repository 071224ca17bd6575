"""The one catalogue of gateway metric names.  Every metric lives in a per-app registry
(no module globals), so two gateways can run in one process."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

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
    client_disconnects: Counter
    resumes: Counter
    shared_limit_errors: Counter
    rejections: Counter

    children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)

    def of(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, cached: prometheus_client's lookup takes a lock and
        builds a key on every call, a cost paid several times per request otherwise."""
        key = (id(metric), values)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_metrics() -> GatewayMetrics:
    r = CollectorRegistry(auto_describe=True)
    return GatewayMetrics(
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
        inflight=Gauge("infercdn_inflight_requests", "Requests in flight per endpoint", ["endpoint"], registry=r),
        endpoint_healthy=Gauge("infercdn_endpoint_healthy", "1 if active health checks pass",
                               ["pool", "endpoint"], registry=r),
        endpoint_ejected=Gauge("infercdn_endpoint_ejected", "1 if ejected by outlier detection",
                               ["pool", "endpoint"], registry=r),
        endpoint_latency_ms=Gauge("infercdn_endpoint_latency_ms", "EWMA of measured latency to the endpoint",
                                  ["pool", "endpoint"], registry=r),
        transitions=Counter("infercdn_endpoint_transitions", "Health/outlier state transitions",
                            ["endpoint", "kind", "to"], registry=r),
        client_disconnects=Counter("infercdn_client_disconnects", "Clients that left before the end",
                                   ["model"], registry=r),
        resumes=Counter("infercdn_stream_resumes", "Streams continued on another endpoint after their first token",
                        ["strategy", "result"], registry=r),
        shared_limit_errors=Counter("infercdn_shared_limit_errors",
                                    "Redis calls of auth.shared that failed (the gateway's own limits decided)",
                                    registry=r),
        rejections=Counter("infercdn_rejected_requests", "Requests the gateway answered itself, by status and error code",
                           ["status", "code"], registry=r),
    )
