"""The canary: checks that each endpoint serves the model it claims.

Every ``canary.interval_s`` each endpoint of a model gets the same few greedy requests (fixed
prompts, temperature 0, ``max_tokens`` tokens, ``return_token_ids``), and its token ids are
compared with the model's reference: the answers of reference endpoints (pools carrying every
``canary.reference_tags``, e.g. an operator-verified provider), kept per model and prompt and
asked again after ``reference_ttl_s``.  Per prompt, agreement is the length of the common prefix
over the reference's length; an endpoint whose mean disagreement exceeds ``tolerance`` is
quarantined: no traffic (not even in panic) until it passes again or an operator clears it
(POST /admin/endpoints/{id}/unquarantine).  The check also asks ``/v1/models`` and reads the
answer's ``model`` field: both must name the registered model.

A registered endpoint that is not a reference is held ("canary_pending") from the moment it
appears until its first check passes (``hold_new``).  With no reference for a model only the
model name checks run.  A check that fails to get an answer (error, timeout) changes nothing:
health and outlier detection deal with unreachable endpoints.  Canary requests go straight to
the endpoint, not through the proxy, and are counted apart (``infercdn_canary_*``).  Under
``--workers N`` only the host's prober runs the checks; the others follow its verdicts
(``gateway/canary_share.py``)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.background import every
from gateway.config import CanaryCfg
from gateway.state import CANARY, CANARY_SHARE, DISCOVERED, HOST_LINK, METRICS, OBSERVATIONS, RUNTIME, SNAPSHOT
from routing.topology import Endpoint, Pool, Topology

log = logging.getLogger("infercdn.canary")


class Inconclusive(Exception):
    """No usable answer (connection error, timeout, non-200, unreadable body)."""


@dataclass
class Verdict:
    result: str  # pass | fail | pending
    at: float
    reason: str | None = None
    evidence: dict[str, Any] | None = None


@dataclass
class Reference:
    tokens: tuple[int, ...]
    at: float
    endpoint: str


@dataclass
class CanaryState:
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    references: dict[tuple[str, int], Reference] = field(default_factory=dict)  # (model, prompt) ->
    due: dict[str, float] = field(default_factory=dict)

    def as_json(self, now: float) -> dict[str, Any]:
        return {"endpoints": {eid: {"result": v.result, "reason": v.reason, "s_ago": round(now - v.at, 3),
                                    "evidence": v.evidence} for eid, v in self.verdicts.items()},
                "references": {f"{m}#{i}": {"tokens": list(r.tokens), "from": r.endpoint, "s_ago": round(now - r.at, 3)}
                               for (m, i), r in self.references.items()}}


def is_reference(pool: Pool, topology: Topology, cfg: CanaryCfg) -> bool:
    tags = pool.tags | (topology.regions[pool.region].tags if pool.region_tags else frozenset())
    return bool(cfg.reference_tags) and set(cfg.reference_tags) <= tags


def disagreement(reference: tuple[int, ...], got: tuple[int, ...]) -> float:
    """1 - (common prefix / reference length): greedy decoding diverges once and for all."""
    if not reference:
        return 0.0 if not got else 1.0
    n = 0
    for a, b in zip(reference, got):
        if a != b:
            break
        n += 1
    return 1.0 - n / len(reference)


async def _ask(http: aiohttp.ClientSession, ep: Endpoint, upstream: str, prompt: str, cfg: CanaryCfg,
               count: Callable[[int], None]) -> tuple[tuple[int, ...], str | None]:
    body = {"model": upstream, "prompt": prompt, "max_tokens": cfg.max_tokens, "temperature": 0,
            "return_token_ids": True, "stream": False}
    try:
        async with asyncio.timeout(cfg.timeout_s):
            async with http.post(ep.url + "/v1/completions", json=body) as resp:
                if resp.status != 200:
                    raise Inconclusive(f"/v1/completions answered {resp.status}")
                data = await resp.json(content_type=None)
        ids = tuple(int(t) for t in data["choices"][0]["token_ids"])
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise Inconclusive(f"/v1/completions: {type(exc).__name__}: {exc}") from None
    count(len(ids))
    return ids, data.get("model")


async def _listed(http: aiohttp.ClientSession, ep: Endpoint, cfg: CanaryCfg) -> list[str]:
    try:
        async with asyncio.timeout(cfg.timeout_s):
            async with http.get(ep.url + "/v1/models") as resp:
                if resp.status != 200:
                    raise Inconclusive(f"/v1/models answered {resp.status}")
                data = await resp.json(content_type=None)
        return [str(m.get("id")) for m in data["data"]]
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, KeyError, TypeError,
            AttributeError) as exc:
        raise Inconclusive(f"/v1/models: {type(exc).__name__}: {exc}") from None


class Canary:
    def __init__(self, app: web.Application, http: aiohttp.ClientSession, clock: Callable[[], float]) -> None:
        self.app, self.http, self.clock = app, http, clock
        self.state = app[CANARY]

    @property
    def cfg(self) -> CanaryCfg:
        cfg = self.app[SNAPSHOT].current.config.canary
        return cfg if cfg is not None else CanaryCfg(enabled=False)

    def hold_new(self, topology: Topology) -> None:
        """Hook on every new topology: registered endpoints not checked yet get no traffic."""
        cfg, obs = self.cfg, self.app[OBSERVATIONS]
        if not (cfg.enabled and cfg.hold_new):
            return
        for pool in topology.pools:
            if pool.provider is None or is_reference(pool, topology, cfg):
                continue
            for ep in pool.endpoints:
                if ep.id not in self.state.verdicts and obs.held(ep.id) is None:
                    obs.hold(ep.id, "canary_pending")
                    self.state.verdicts[ep.id] = Verdict("pending", self.clock())

    async def round(self) -> None:
        cfg = self.cfg
        if not cfg.enabled:
            return
        topology = self.app[SNAPSHOT].current.topology
        now = self.clock()
        self._forget_gone(topology)
        for model in sorted(topology.models()):
            refs = [(p, ep) for p in topology.pools if model in p.models and is_reference(p, topology, cfg)
                    for ep in p.endpoints]
            await self._refresh_references(model, refs, cfg, now)
        jobs = []
        for pool in topology.pools:
            if is_reference(pool, topology, cfg):
                continue
            for ep in pool.endpoints:
                if self.state.due.get(ep.id, 0.0) <= now:
                    self.state.due[ep.id] = now + cfg.interval_s
                    jobs.append(self.check(pool, ep, cfg))
        gate = asyncio.Semaphore(8)

        async def bounded(job: Any) -> None:
            async with gate:
                await job
        await asyncio.gather(*(bounded(j) for j in jobs))

    def _forget_gone(self, topology: Topology) -> None:
        """Endpoints that left are forgotten, except the quarantined: one that comes back under
        the same id stays out until it passes."""
        obs = self.app[OBSERVATIONS]
        for eid in [e for e, v in self.state.verdicts.items() if e not in topology.endpoints and v.result != "fail"]:
            del self.state.verdicts[eid]
            self.state.due.pop(eid, None)
            if obs.held(eid) == "canary_pending":
                obs.unhold(eid)

    async def _refresh_references(self, model: str, refs: list[tuple[Pool, Endpoint]], cfg: CanaryCfg,
                                  now: float) -> None:
        for i, prompt in enumerate(cfg.prompts):
            ref = self.state.references.get((model, i))
            if ref is not None and now - ref.at < cfg.reference_ttl_s:
                continue
            for pool, ep in refs:  # the first reference that answers as itself
                upstream = pool.models[model]
                try:
                    wrong = await self._identity(ep, upstream, cfg)
                    ids, named = await self._completion(ep, upstream, prompt, cfg) if wrong is None else ((), None)
                except Inconclusive:
                    continue
                if wrong is not None or named != upstream:
                    log.warning("canary: reference %s does not serve %s as registered (%s); not used",
                                ep.id, upstream, wrong or {"model_field": named})
                    continue
                if ref is not None and ref.tokens != ids:
                    log.warning("canary: reference endpoints disagree on %s prompt %d: %s had %s, %s says %s",
                                model, i, ref.endpoint, list(ref.tokens), ep.id, list(ids))
                self.state.references[(model, i)] = Reference(ids, now, ep.id)
                self.state.verdicts[ep.id] = Verdict("pass", self.clock(), "reference")
                self.app[METRICS].canary_checks.labels(pool.name, ep.id, "reference").inc()
                break

    async def _completion(self, ep: Endpoint, upstream: str, prompt: str, cfg: CanaryCfg
                          ) -> tuple[tuple[int, ...], str | None]:
        m = self.app[METRICS]
        m.canary_requests.labels(ep.id).inc()
        return await _ask(self.http, ep, upstream, prompt, cfg, m.canary_tokens.labels(ep.id).inc)

    async def _identity(self, ep: Endpoint, upstream: str, cfg: CanaryCfg) -> dict[str, Any] | None:
        """Evidence of a wrong /v1/models, or None."""
        self.app[METRICS].canary_requests.labels(ep.id).inc()
        listed = await _listed(self.http, ep, cfg)
        return None if upstream in listed else {"check": "v1_models", "expected": upstream, "listed": listed}

    async def check(self, pool: Pool, ep: Endpoint, cfg: CanaryCfg) -> None:
        """Every model of the endpoint's pool; the first that fails decides."""
        evidence = None
        try:
            for model in sorted(pool.models):
                upstream = pool.models[model]
                evidence = await self._identity(ep, upstream, cfg) or await self._compare(model, ep, upstream, cfg)
                if evidence is not None:
                    evidence["model"] = model
                    break
        except Inconclusive as exc:
            self.app[METRICS].canary_checks.labels(pool.name, ep.id, "error").inc()
            log.info("canary: %s inconclusive (%s)", ep.id, exc)
            return
        self._decide(pool, ep, evidence)

    async def _compare(self, model: str, ep: Endpoint, upstream: str, cfg: CanaryCfg) -> dict[str, Any] | None:
        worst: list[dict[str, Any]] = []
        total = 0.0
        compared = 0
        for i, prompt in enumerate(cfg.prompts):
            ids, named = await self._completion(ep, upstream, prompt, cfg)
            if named != upstream:
                return {"check": "model_field", "expected": upstream, "got": named}
            ref = self.state.references.get((model, i))
            if ref is None:
                continue
            d = disagreement(ref.tokens, ids)
            total += d
            compared += 1
            if d > 0:
                worst.append({"prompt": prompt, "expected": list(ref.tokens), "got": list(ids),
                              "reference": ref.endpoint, "disagreement": round(d, 3)})
        if compared and total / compared > cfg.tolerance:
            return {"check": "tokens", "disagreement": round(total / compared, 3), "tolerance": cfg.tolerance,
                    "prompts": worst}
        return None

    def _decide(self, pool: Pool, ep: Endpoint, evidence: dict[str, Any] | None) -> None:
        obs, m, now = self.app[OBSERVATIONS], self.app[METRICS], self.clock()
        if evidence is None:
            m.canary_checks.labels(pool.name, ep.id, "pass").inc()
            m.endpoint_quarantined.labels(pool.name, ep.id).set(0)
            was = obs.unhold(ep.id)
            if was is not None:
                log.info("canary: %s passed; %s lifted", ep.id, was)
            self.state.verdicts[ep.id] = Verdict("pass", now)
            return
        m.canary_checks.labels(pool.name, ep.id, "fail").inc()
        m.endpoint_quarantined.labels(pool.name, ep.id).set(1)
        if obs.held(ep.id) != "quarantined":
            log.warning("canary: %s (pool %s) QUARANTINED: %s", ep.id, pool.name, evidence)
        obs.hold(ep.id, "quarantined")
        self.state.verdicts[ep.id] = Verdict("fail", now, str(evidence.get("check")), evidence)


def clear(app: web.Application, endpoint_id: str, share: bool = True) -> str | None:
    """An operator clears a quarantine (or a pending hold); the reason it had, or None.
    ``share``: under --workers, the host's other workers clear it too."""
    was = app[OBSERVATIONS].unhold(endpoint_id)
    if was is not None:
        state = app[CANARY]
        state.verdicts[endpoint_id] = Verdict("pass", app[RUNTIME].clock(), "cleared by an operator")
        log.warning("canary: %s cleared by an operator (was %s)", endpoint_id, was)
        if share:
            from gateway.canary_share import share_clear  # it imports this module

            share_clear(app, endpoint_id)
    return was


def canary_loop(clock: Callable[[], float], tick_s: float = 1.0
                ) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[CANARY] = CanaryState()
        cfg = app[SNAPSHOT].current.config.canary
        tick = min(tick_s, cfg.interval_s / 4) if cfg is not None else tick_s
        link = app.get(HOST_LINK)
        async with aiohttp.ClientSession() as http:
            canary = Canary(app, http, clock)
            app[DISCOVERED].on_new_topology.append(canary.hold_new)
            canary.hold_new(app[SNAPSHOT].current.topology)
            if link is None:
                async with every(tick, canary.round, "canary", clock=clock):
                    yield
                return
            from gateway.canary_share import CanaryShare  # it imports this module

            share = app[CANARY_SHARE] = CanaryShare(canary, link)  # --workers: one canary per host
            if not link.prober:  # the others follow its verdicts (and hold new endpoints at once)
                yield
                return
            app[DISCOVERED].on_new_topology.append(lambda _: share.tell())
            share.tell()

            async def round_and_tell() -> None:
                await canary.round()
                share.tell()
            async with every(tick, round_and_tell, "canary", clock=clock):
                yield
    return ctx
