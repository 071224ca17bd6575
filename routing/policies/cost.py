"""Cheapest first among the pools whose score is within ``slack_ms`` of the best; the rest
follow by score.  A pool without a price counts as the most expensive."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from routing.plan import RequestContext
from routing.policies.base import ScoredPool, by_score


class CostPolicy:
    name: ClassVar[str] = "cost"

    def __init__(self, slack_ms: float = 50.0) -> None:
        self.slack_ms = slack_ms

    def rank(self, ctx: RequestContext, scored_pools: Sequence[ScoredPool]) -> list[ScoredPool]:
        ranked = sorted(scored_pools, key=by_score)
        if not ranked:
            return ranked
        slack = self.slack_ms if ctx.cost_slack_ms is None else ctx.cost_slack_ms
        limit = ranked[0].score_ms + slack
        near = [sp for sp in ranked if sp.score_ms <= limit]
        far = ranked[len(near):]

        def price(sp: ScoredPool) -> float:
            p = sp.pool.price_per_mtok
            return math.inf if p is None else p

        near.sort(key=lambda sp: (price(sp), *by_score(sp)))
        return near + far
