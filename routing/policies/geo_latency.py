"""Default policy: the lowest expected time to first token (geo + excess + queue + penalty)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from routing.plan import RequestContext
from routing.policies.base import ScoredPool, by_score


class GeoLatencyPolicy:
    name: ClassVar[str] = "geo_latency"

    def rank(self, ctx: RequestContext, scored_pools: Sequence[ScoredPool]) -> list[ScoredPool]:
        return sorted(scored_pools, key=by_score)
