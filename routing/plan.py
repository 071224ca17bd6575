"""The planner's inputs and outputs: a request context, scored candidates, and the
explanation of every decision.  (Contract between ``routing`` and ``gateway``.)"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from routing.deadlines import Deadlines
from routing.topology import Endpoint, Location, Pool


@dataclass(frozen=True, slots=True)
class RoutingParams:
    geo_base_ms: float = 5.0  # fixed cost of any network path
    geo_ms_per_1000km: float = 10.0  # round trip per 1000 km of great-circle distance
    queue_ms_per_waiting: float = 50.0  # expected delay per request waiting in the pool
    queue_ms_per_running: float = 2.0  # mild preference for less busy pools
    kv_pressure_ms: float = 200.0  # added at 100 % KV-cache use (scaled linearly above 50 %)
    error_penalty_ms: float = 500.0  # times the recent error rate of the endpoint
    cost_ms_per_dollar: float = 0.0  # optional: ms added per $ per 1M tokens
    panic_threshold: float = 0.5  # fraction of a model's endpoints that must be eligible
    max_pools: int = 8


@dataclass(frozen=True, slots=True)
class RequestContext:
    model: str
    client: Location
    required_tags: frozenset[str] = frozenset()  # e.g. {"soc2"}: every tag must be on the pool
    allowed_jurisdictions: frozenset[str] | None = None  # residency: None = anywhere
    prefix_hash: int | None = None  # for optional prefix affinity
    exclude_pools: frozenset[str] = frozenset()
    policy: str | None = None  # the tenant's ranking policy; None: the planner's
    cost_slack_ms: float | None = None  # policy cost: how far from the best a cheaper pool may be


@dataclass(frozen=True, slots=True)
class ScoreComponents:
    geo_ms: float
    excess_ms: float
    queue_ms: float
    penalty_ms: float

    @property
    def total_ms(self) -> float:
        return self.geo_ms + self.excess_ms + self.queue_ms + self.penalty_ms


@dataclass(frozen=True, slots=True)
class Candidate:
    pool: Pool
    endpoint: Endpoint
    upstream_model: str
    score_ms: float
    components: ScoreComponents

    @property
    def region(self) -> str:
        return self.pool.region


@dataclass(frozen=True, slots=True)
class Rejection:
    pool: str
    endpoint: str | None  # None: the whole pool was filtered
    reason: str  # "model_not_served" | "unhealthy" | "ejected" | "breaker_open" | "breaker_half_open" |
    #              "throttled" | "draining" | "tags" | "jurisdiction" | "excluded" | ...


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    client: Location
    candidates: tuple[Candidate, ...]  # ordered: best pool's endpoints (in-pool order), then the next pool's ...
    rejected: tuple[Rejection, ...] = ()
    panic: bool = False
    policy: str = "geo_latency"
    notes: tuple[str, ...] = field(default=())

    def explain(self, deadlines: Callable[[Candidate], Deadlines] | None = None) -> dict[str, Any]:
        """JSON-ready explanation: candidates with every score component (and, given
        ``deadlines``, the first-token deadline and stall timeout each would get), and every filter."""
        shown: list[dict[str, Any]] = [
            {"rank": i + 1, "region": c.region, "pool": c.pool.name, "endpoint": c.endpoint.id,
             "url": c.endpoint.url, "upstream_model": c.upstream_model, "score_ms": round(c.score_ms, 2),
             "geo_ms": round(c.components.geo_ms, 2), "excess_ms": round(c.components.excess_ms, 2),
             "queue_ms": round(c.components.queue_ms, 2), "penalty_ms": round(c.components.penalty_ms, 2)}
            for i, c in enumerate(self.candidates)
        ]
        if deadlines is not None:
            for cand, row in zip(self.candidates, shown):
                row["deadlines"] = deadlines(cand).explain()
        return {
            "model": self.model,
            "client": {"lat": self.client.lat, "lon": self.client.lon, "country": self.client.country,
                       "continent": self.client.continent, "source": self.client.source},
            "policy": self.policy,
            "panic": self.panic,
            "candidates": shown,
            "rejected": [{"pool": r.pool, "endpoint": r.endpoint, "reason": r.reason} for r in self.rejected],
            "notes": list(self.notes),
        }
