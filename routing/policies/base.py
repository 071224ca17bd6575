"""What a ranking policy sees and returns.

The planner filters eligibility once and scores each remaining pool; a policy only orders
the scored pools.  It returns a ranked list, not one pick: failover walks the list.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from routing.plan import RequestContext, ScoreComponents
from routing.topology import Endpoint, Pool


@dataclass(slots=True)
class ScoredPool:
    pool: Pool
    components: ScoreComponents
    score_ms: float
    measured_ms: float | None  # mean measured gateway -> pool latency of its endpoints, if known
    endpoints: list[tuple[Endpoint, float]]  # (endpoint, load) in this group, for the balancer


class Policy(Protocol):
    name: ClassVar[str]

    def rank(self, ctx: RequestContext, scored_pools: Sequence[ScoredPool]) -> list[ScoredPool]: ...


def by_score(sp: ScoredPool) -> tuple[float, int, str]:
    """Score ascending; at equal score the lower failover tier, then the name (stable output)."""
    return (sp.score_ms, sp.pool.tier, sp.pool.name)
