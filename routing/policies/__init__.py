"""Ranking policies, one per module, registered by ``name`` (the config key)."""
from __future__ import annotations

from routing.policies.base import Policy, ScoredPool
from routing.policies.cost import CostPolicy
from routing.policies.geo_latency import GeoLatencyPolicy
from routing.policies.lowest_latency import LowestLatencyPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (GeoLatencyPolicy, LowestLatencyPolicy, CostPolicy)
}


def get_policy(name: str) -> Policy:
    """A fresh instance of the policy registered as ``name``; ValueError names the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


__all__ = ["POLICIES", "Policy", "ScoredPool", "get_policy"]
