"""The geography, named once: Region (≈ Envoy locality), Pool (a failover unit inside a
region, with a priority tier), Endpoint (≈ host).  Immutable; built from validated config."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float
    country: str | None = None
    continent: str | None = None
    city: str | None = None
    source: str = "config"  # "geoip" | "fallback" | "config"


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    location: Location
    jurisdiction: str | None = None
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    url: str  # base URL, e.g. "http://127.0.0.1:8001" (no trailing slash, no /v1)
    pool: str
    weight: float = 1.0
    health_url: str | None = None  # e.g. a launcher's control port that reports draining


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    region: str
    models: Mapping[str, str]  # public model name -> upstream (served) model name
    endpoints: tuple[Endpoint, ...]
    tags: frozenset[str] = frozenset()
    price_per_mtok: float | None = None
    tier: int = 0  # failover priority: lower tiers are preferred at equal score
    draining: bool = False
    max_context: int | None = None
    can_continue: bool = True  # accepts token-id / continue_final_message resumes
    region_tags: bool = True  # carries its region's tags (false for self-registered pools: trust is per provider)
    provider: str | None = None  # self-registered pools: who registered them
    prefill: bool = True  # accepts an assistant prefill from another model's cut stream (docs/failover.md)


@dataclass(frozen=True, slots=True)
class Topology:
    regions: Mapping[str, Region]
    pools: tuple[Pool, ...]
    gateway_location: Location
    gateway_region: str | None = None
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.endpoints:
            eps = {e.id: e for p in self.pools for e in p.endpoints}
            object.__setattr__(self, "endpoints", eps)

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def models(self) -> frozenset[str]:
        return frozenset(m for p in self.pools for m in p.models)
