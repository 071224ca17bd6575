"""Measured latency only: ignores where the client is.  Pools never measured go last (by
score among themselves), so a fresh gateway still has an order."""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from routing.plan import RequestContext
from routing.policies.base import ScoredPool


def _key(sp: ScoredPool) -> tuple[bool, float, int, str]:
    c = sp.components
    if sp.measured_ms is None:
        return (True, sp.score_ms, sp.pool.tier, sp.pool.name)
    return (False, sp.measured_ms + c.queue_ms + c.penalty_ms, sp.pool.tier, sp.pool.name)


class LowestLatencyPolicy:
    name: ClassVar[str] = "lowest_latency"

    def rank(self, ctx: RequestContext, scored_pools: Sequence[ScoredPool]) -> list[ScoredPool]:
        return sorted(scored_pools, key=_key)
