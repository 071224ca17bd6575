"""In-pool balancers: order a pool's endpoints for one request.

Each balancer receives ``(endpoint, load)`` pairs, where the planner computed load as
(in-flight requests + vLLM-reported waiting requests when fresh) / endpoint weight, and
returns *all* of them ordered: the first is tried first, the rest are failover order.
Registered by ``name`` like the ranking policies.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import ClassVar, Protocol

from routing.plan import RequestContext
from routing.topology import Endpoint

Loaded = tuple[Endpoint, float]
_MASK = (1 << 64) - 1


def _load(item: Loaded) -> float:
    return item[1]


class Balancer(Protocol):
    name: ClassVar[str]

    def order(self, ctx: RequestContext, endpoints: Sequence[Loaded], rng: random.Random) -> list[Endpoint]: ...


class P2CBalancer:
    """Power of two choices: draw two distinct endpoints, the less loaded goes first and the
    other second; the rest follow by load."""
    name: ClassVar[str] = "p2c"

    def order(self, ctx: RequestContext, endpoints: Sequence[Loaded], rng: random.Random) -> list[Endpoint]:
        n = len(endpoints)
        if n == 1:
            return [endpoints[0][0]]
        if n == 0:
            return []
        rand = rng.random  # int(random() * n) is uniform enough here and 10x cheaper than randrange
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        if b[1] < a[1]:
            a, b = b, a
        if n == 2:
            return [a[0], b[0]]
        rest = sorted((e for k, e in enumerate(endpoints) if k != i and k != j), key=_load)
        return [a[0], b[0], *(e for e, _ in rest)]


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash, the same in every process."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class PrefixAffinityBalancer:
    """Bounded-load prefix affinity: requests sharing ``ctx.prefix_hash`` go to the same
    endpoint (rendezvous hashing, so adding or removing one endpoint moves few prefixes) as
    long as its load stays within ``c`` times the pool average (counting this request);
    otherwise the next endpoint in hash order that fits.  No prefix: power of two choices."""
    name: ClassVar[str] = "prefix_affinity"

    def __init__(self, c: float = 1.25) -> None:
        self.c = c
        self._p2c = P2CBalancer()
        self._keys: dict[str, int] = {}

    def _key(self, endpoint_id: str) -> int:
        k = self._keys.get(endpoint_id)
        if k is None:
            if len(self._keys) > 65536:
                self._keys.clear()
            k = int.from_bytes(hashlib.blake2b(endpoint_id.encode(), digest_size=8).digest(), "big")
            self._keys[endpoint_id] = k
        return k

    def order(self, ctx: RequestContext, endpoints: Sequence[Loaded], rng: random.Random) -> list[Endpoint]:
        if ctx.prefix_hash is None or len(endpoints) < 2:
            return self._p2c.order(ctx, endpoints, rng)
        h = ctx.prefix_hash & _MASK
        by_hash = sorted(endpoints, key=lambda e: _mix(h ^ self._key(e[0].id)), reverse=True)
        bound = math.ceil(self.c * (sum(load for _, load in endpoints) + 1) / len(endpoints))
        chosen = next((e for e in by_hash if e[1] + 1 <= bound), None)
        if chosen is None:
            return self._p2c.order(ctx, endpoints, rng)
        first = chosen[0]  # compared by the endpoint, not by the identity of its (endpoint, load) pair
        rest = sorted((e for e in endpoints if e[0] is not first), key=_load)
        return [first, *(e for e, _ in rest)]


BALANCERS: dict[str, type[Balancer]] = {cls.name: cls for cls in (P2CBalancer, PrefixAffinityBalancer)}


def get_balancer(name: str) -> Balancer:
    try:
        return BALANCERS[name]()
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; known: {', '.join(sorted(BALANCERS))}") from None
