"""The planner: from a request context to an ordered, explained list of candidates.

1. Eligibility, once, before any policy: the pool serves the model, carries the required
   tags (its own or its region's), sits in an allowed jurisdiction, is not excluded or
   draining (in the config, or drained by the operator); the endpoint is not draining,
   healthy, not ejected, its breaker lets a request through and it is not throttled, as a
   whole or for the request's model (see ``Observations`` for the reasons).  A draining endpoint is never tried, not even in panic.  Every removal becomes a
   Rejection (pool-level when the whole pool is out, endpoint-level otherwise).
2. Panic: when fewer than ``panic_threshold`` of the model's endpoints (in pools that pass
   the static filters) are eligible, the unhealthy and ejected ones are tried too, after the
   eligible ones: better an unlikely endpoint than a certain failure.  Never re-added: throttled
   endpoints (they asked for no requests), held ones (quarantined by the canary, or awaiting
   its first check), and those whose breaker is open or half-open with every trial slot taken:
   a breaker brings traffic to a dead endpoint down to its half-open trials, panic or not.
3. Score per pool, in ms of expected time to first token: geo (client -> region) + excess
   + queue (fresh reported load) + penalty (recent errors, optional price).
   Excess is the measured gateway -> pool latency above the distance prior, less the
   gateway-side offset, never negative.  The offset is what every pool shows alike: the
   smallest (measured - prior) over the eligible pools with a measurement (over the others
   when none is eligible), at least 0.  Delays
   on the gateway's own side (a busy event loop, a slow host: seen at start-up as 60-110 ms
   on a 1 ms path) inflate every measurement by about the same amount; subtracting the
   offset keeps them from reordering pools, while a pool slower than the rest still pays
   the difference.  A lone measured pool therefore has no excess: nothing to compare it
   with.  The plan's notes say when an offset was subtracted.
4. The policy ranks the pools; the balancer orders each pool's endpoints.

Everything that depends only on the topology is computed once, in ``__init__``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from routing.balance import get_balancer
from routing.geo import geo_ms
from routing.observations import Observations, RouteInputs
from routing.plan import Candidate, Plan, Rejection, RequestContext, RoutingParams, ScoreComponents
from routing.policies import Policy, ScoredPool, get_policy
from routing.topology import Endpoint, Location, Pool, Region, Topology

_Group = list[tuple[Endpoint, RouteInputs]]
_NEVER = frozenset({"throttled", "quarantined", "canary_pending", "breaker_open", "breaker_half_open"})  # not in panic
_GEO_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class _PoolInfo:
    pool: Pool
    region: Region
    tags: frozenset[str]  # the pool's tags and its region's
    prior_ms: float  # geo prior gateway -> pool region
    price_ms: float
    unusable: bool  # draining or without endpoints, whatever the request


class Planner:
    def __init__(self, topology: Topology, observations: Observations, params: RoutingParams,
                 rng: random.Random, policy: str = "geo_latency", balancer: str = "p2c") -> None:
        self.topology = topology
        self.observations = observations
        self.params = params
        self.rng = rng
        self.policy = get_policy(policy)
        self._policies = {self.policy.name: self.policy}
        self.balancer = get_balancer(balancer)
        infos = [self._info(p) for p in topology.pools]
        self._by_model: dict[str, list[_PoolInfo]] = {}
        self._not_serving: dict[str, tuple[Rejection, ...]] = {}
        for model in topology.models():
            self._by_model[model] = [i for i in infos if model in i.pool.models]
            self._not_serving[model] = tuple(Rejection(i.pool.name, None, "model_not_served")
                                             for i in infos if model not in i.pool.models)
        self._all_not_serving = tuple(Rejection(i.pool.name, None, "model_not_served") for i in infos)
        self._geo_cache: dict[tuple[float, float], dict[str, float]] = {}  # client -> region -> ms

    def _info(self, pool: Pool) -> _PoolInfo:
        region = self.topology.regions[pool.region]
        price = (pool.price_per_mtok or 0.0) * self.params.cost_ms_per_dollar
        return _PoolInfo(pool, region, pool.tags | region.tags if pool.region_tags else pool.tags,
                         geo_ms(self.topology.gateway_location, region.location, self.params), price,
                         pool.draining or not pool.endpoints)

    def plan(self, ctx: RequestContext) -> Plan:
        infos = self._by_model.get(ctx.model)
        if infos is None:
            return Plan(ctx.model, ctx.client, (), self._all_not_serving, policy=self.policy.name,
                        notes=(f"no pool serves model {ctx.model!r}",))
        rejected = list(self._not_serving[ctx.model])
        route_inputs = self.observations.route_inputs
        ok: list[tuple[_PoolInfo, _Group]] = []
        out: list[tuple[_PoolInfo, _Group]] = []
        total = eligible = 0
        constrained = bool(ctx.exclude_pools or ctx.required_tags or ctx.allowed_jurisdictions is not None)
        drained = self.observations.drained_pools
        per_model = self.observations.has_model_throttles
        for info in infos:
            reason = self._static_reason(info, ctx, drained) if constrained or info.unusable or drained else None
            if reason is not None:
                rejected.append(Rejection(info.pool.name, None, reason))
                continue
            good: _Group = []
            bad: _Group = []
            upstream = info.pool.models[ctx.model] if per_model else ""
            for ep in info.pool.endpoints:
                inputs = route_inputs(ep.id)
                if per_model and inputs[0] is None and self.observations.model_throttled(ep.id, upstream):
                    inputs = ("throttled", *inputs[1:])
                (bad if inputs[0] is not None else good).append((ep, inputs))
            total += len(info.pool.endpoints)
            eligible += len(good)
            if good:
                ok.append((info, good))
                rejected.extend(Rejection(info.pool.name, ep.id, inp[0]) for ep, inp in bad)  # type: ignore[arg-type]
            else:
                rejected.append(Rejection(info.pool.name, None, _pool_reason(bad)))
            fallback = [item for item in bad if item[1][0] != "draining"]  # not even in panic
            if fallback:
                out.append((info, fallback))
        panic = total > 0 and eligible < self.params.panic_threshold * total
        offset = self._offset(ok or out)
        candidates = self._candidates(ctx, ok, offset)
        notes: list[str] = []
        if offset > 0:
            notes.append(f"gateway-side latency offset {offset:.1f} ms subtracted")
        if panic:
            candidates += self._candidates(ctx, _unthrottled(out), offset)
            notes.append(f"panic: {eligible} of {total} endpoints eligible (threshold "
                         f"{self.params.panic_threshold:.0%}); ineligible endpoints follow, except throttled, "
                         "held, draining ones and those whose breaker is open")
        if not candidates:
            notes.append(f"no eligible endpoint for model {ctx.model!r}")
        return Plan(ctx.model, ctx.client, tuple(candidates), tuple(rejected), panic,
                    self._policy(ctx).name, tuple(notes))

    def _policy(self, ctx: RequestContext) -> Policy:
        if ctx.policy is None:
            return self.policy
        policy = self._policies.get(ctx.policy)
        if policy is None:
            policy = self._policies[ctx.policy] = get_policy(ctx.policy)
        return policy

    @staticmethod
    def _static_reason(info: _PoolInfo, ctx: RequestContext, drained: frozenset[str]) -> str | None:
        pool = info.pool
        if pool.name in ctx.exclude_pools:
            return "excluded"
        if pool.draining or pool.name in drained:
            return "draining"
        if ctx.required_tags and not ctx.required_tags <= info.tags:
            return "tags"
        allowed = ctx.allowed_jurisdictions
        if allowed is not None and info.region.jurisdiction not in allowed:
            return "jurisdiction"
        if not pool.endpoints:
            return "no_endpoints"
        return None

    @staticmethod
    def _offset(groups: list[tuple[_PoolInfo, _Group]]) -> float:
        """Gateway-side latency offset: min over measured pools of (measured - prior), >= 0."""
        best: float | None = None
        for info, group in groups:
            measured = _measured(group)
            if measured is not None and (best is None or measured - info.prior_ms < best):
                best = measured - info.prior_ms
        return max(0.0, best) if best is not None else 0.0

    def _candidates(self, ctx: RequestContext, groups: list[tuple[_PoolInfo, _Group]],
                    offset: float) -> list[Candidate]:
        if not groups:
            return []
        geo = self._client_geo(ctx.client)
        scored = [self._score(info, group, geo[info.region.name], offset) for info, group in groups]
        ranked = self._policy(ctx).rank(ctx, scored)[: self.params.max_pools]
        out: list[Candidate] = []
        for sp in ranked:
            upstream = sp.pool.models[ctx.model]
            for ep in self.balancer.order(ctx, sp.endpoints, self.rng):
                out.append(Candidate(sp.pool, ep, upstream, sp.score_ms, sp.components))
        return out

    def _client_geo(self, client: Location) -> dict[str, float]:
        """geo_ms from the client to every region; clients cluster on GeoIP city points, so a
        small bounded cache keyed by coordinates removes the trigonometry from the hot path."""
        key = (client.lat, client.lon)
        geo = self._geo_cache.get(key)
        if geo is None:
            if len(self._geo_cache) >= _GEO_CACHE_SIZE:
                self._geo_cache.clear()
            geo = {name: geo_ms(client, r.location, self.params) for name, r in self.topology.regions.items()}
            self._geo_cache[key] = geo
        return geo

    def _score(self, info: _PoolInfo, group: _Group, geo: float, offset: float) -> ScoredPool:
        p = self.params
        lat_sum = err_sum = w_sum = r_sum = kv_sum = 0.0
        lat_n = w_n = r_n = kv_n = 0
        loaded: list[tuple[Endpoint, float]] = []
        for ep, (_, lat, inflight, running, waiting, kv, err) in group:
            if lat is not None:
                lat_sum += lat
                lat_n += 1
            if running is not None:
                r_sum += running
                r_n += 1
            if waiting is not None:
                w_sum += waiting
                w_n += 1
            if kv is not None:
                kv_sum += kv
                kv_n += 1
            err_sum += err
            # the engine's own running count also holds other gateways' requests (and ours,
            # hence max, not sum); what waits is queued whoever sent it
            busy = inflight if running is None else max(inflight, running)
            loaded.append((ep, (busy + (waiting or 0)) / (ep.weight if ep.weight > 0 else 1.0)))
        measured = lat_sum / lat_n if lat_n else None
        excess = max(0.0, measured - info.prior_ms - offset) if measured is not None else 0.0
        queue = 0.0
        if w_n:
            queue += w_sum / w_n * p.queue_ms_per_waiting
        if r_n:
            queue += r_sum / r_n * p.queue_ms_per_running
        if kv_n:
            queue += p.kv_pressure_ms * max(0.0, (kv_sum / kv_n - 0.5) / 0.5)
        penalty = err_sum / len(group) * p.error_penalty_ms + info.price_ms
        comps = ScoreComponents(geo, excess, queue, penalty)
        return ScoredPool(info.pool, comps, geo + excess + queue + penalty, measured, loaded)


def _pool_reason(bad: _Group) -> str:
    reasons = {inputs[0] for _, inputs in bad}
    return reasons.pop() if len(reasons) == 1 else "unhealthy_or_ejected"  # type: ignore[return-value]


def _measured(group: _Group) -> float | None:
    """Mean measured latency of the group's endpoints that have one."""
    total = 0.0
    n = 0
    for _, inputs in group:
        lat = inputs[1]
        if lat is not None:
            total += lat
            n += 1
    return total / n if n else None


def _unthrottled(groups: list[tuple[_PoolInfo, _Group]]) -> list[tuple[_PoolInfo, _Group]]:
    """Panic's fallback groups without the throttled, held (quarantined, awaiting their first
    canary) and breaker-stopped endpoints, and without emptied groups."""
    out: list[tuple[_PoolInfo, _Group]] = []
    for info, group in groups:
        kept = [item for item in group if item[1][0] not in _NEVER]
        if kept:
            out.append((info, kept))
    return out
