"""``infercdn route``: print the plan for a client IP and model, with its explanation.

Two sources: a config file (``--config``; no servers are started, every endpoint counts as
healthy unless ``--probe`` checks them once), or a running gateway (``--gateway URL``: its
live health, latency and load).  With neither, the local gateway of ``infercdn up`` is asked
if it answers, else the embedded default config is used."""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from gateway.background import probe
from gateway.config import Config, ConfigError, load_config
from gateway.deadlines import candidate_deadlines
from gateway.snapshot import make_snapshot, observation_params
from gateway.state import Runtime, routing_location
from routing.locate import ClientLocator, open_geoip
from routing.observations import Observations
from routing.plan import RequestContext
from routing.topology import Topology

LOCAL_GATEWAY = "http://127.0.0.1:8080"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="plan from this config file (no servers started)")
    parser.add_argument("--gateway", help="ask a running gateway, e.g. http://127.0.0.1:8080")
    parser.add_argument("--ip", help="client IP address (default: the gateway's own location)")
    parser.add_argument("--model", "-m", required=True, help="model name")
    parser.add_argument("--probe", action="store_true", help="with --config: health-check endpoints once first")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def plan_from_config(cfg: Config, ip: str | None, model: str, probe: bool = False) -> dict[str, Any]:
    runtime = Runtime(clock=time.monotonic, rng=random.Random(0))
    obs = Observations(observation_params(cfg), runtime.clock)
    placeholders = {p.name: [f"http://simulated.invalid/{p.name}/{j}" for j in range(p.simulate.endpoints)]
                    for p in cfg.pools if p.simulate is not None}
    snapshot = make_snapshot(cfg, obs, runtime, placeholders)
    if probe:
        asyncio.run(_probe_once(snapshot.topology, obs, cfg, runtime.clock))
    g = cfg.gateway
    locator = ClientLocator(g.trusted_proxies, open_geoip(cfg.geoip.database), routing_location(g.location))
    location = locator.locate(ip)
    plan = snapshot.planner.plan(RequestContext(model=model, client=location))
    return {"source": "config", "ip": ip, **plan.explain(candidate_deadlines(cfg, model, obs))}


async def _probe_once(topology: Topology, obs: Observations, cfg: Config, clock: Callable[[], float]) -> None:
    async with aiohttp.ClientSession() as session:
        eps = list(topology.endpoints.values())
        for _ in range(max(cfg.health.rise, cfg.health.fall)):
            results = await asyncio.gather(*(probe(session, ep, cfg.health.path, cfg.health.timeout_s, clock)
                                             for ep in eps))
            for ep, (ok, rtt) in zip(eps, results):
                obs.record_probe(ep.id, ok, rtt)


def plan_from_gateway(base: str, ip: str | None, model: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"model": model, **({"ip": ip} if ip else {})})
    with urllib.request.urlopen(f"{base.rstrip('/')}/admin/plan?{query}", timeout=3) as resp:
        return {"source": f"gateway {base}", **orjson.loads(resp.read())}


def render(plan: dict[str, Any]) -> str:
    c = plan["client"]
    lines = [f"plan for model {plan['model']!r}, client {plan.get('ip') or '-'} "
             f"({c.get('country') or '?'}/{c.get('continent') or '?'} at {c['lat']:.2f},{c['lon']:.2f}, {c['source']}) "
             f"from {plan['source']}; policy {plan['policy']}{' — PANIC: trying unhealthy endpoints' if plan['panic'] else ''}"]
    lines.append(f"{'#':>2}  {'region':<14}{'pool':<20}{'endpoint':<24}{'score':>9}{'geo':>9}{'excess':>9}{'queue':>9}{'penalty':>9}")
    for cand in plan["candidates"]:
        lines.append(f"{cand['rank']:>2}  {cand['region']:<14}{cand['pool']:<20}{cand['endpoint']:<24}"
                     f"{cand['score_ms']:>9.1f}{cand['geo_ms']:>9.1f}{cand['excess_ms']:>9.1f}"
                     f"{cand['queue_ms']:>9.1f}{cand['penalty_ms']:>9.1f}")
        if "deadlines" in cand:
            lines.append(f"    first token within {_deadline(cand['deadlines']['ttft'])}, "
                         f"stall after {_deadline(cand['deadlines']['stall'])}")
    for r in plan["rejected"]:
        lines.append(f"    rejected {r['pool']}{'/' + r['endpoint'] if r['endpoint'] else ''}: {r['reason']}")
    lines.extend(f"    note: {n}" for n in plan.get("notes", []))
    lines.append("(scores are ms of expected time to first token: geo + excess latency + queueing + penalties)")
    return "\n".join(lines)


def _deadline(d: dict[str, Any]) -> str:
    """``2.4 s (auto: p99 0.6 s from 120 samples)``, ``10 s (fallback: 3 samples)``, ``30 s (fixed)``."""
    if d["source"] == "auto":
        return f"{d['s']:g} s (auto: p99 {d['p99_s']:g} s from {d['samples']} samples)"
    if d["source"] == "fallback":
        return f"{d['s']:g} s (fallback: {d['samples']} samples, too few)"
    return f"{d['s']:g} s ({'fixed' if d['source'] == 'fixed' else 'the pool' + chr(39) + 's'})"


def main(args: argparse.Namespace) -> int:
    try:
        if args.gateway:
            plan = plan_from_gateway(args.gateway, args.ip, args.model)
        elif args.config:
            plan = plan_from_config(load_config(args.config), args.ip, args.model, args.probe)
        else:
            try:
                plan = plan_from_gateway(LOCAL_GATEWAY, args.ip, args.model)
            except (urllib.error.URLError, OSError):
                plan = plan_from_config(load_config(None), args.ip, args.model, args.probe)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach gateway {args.gateway}: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(plan, option=orjson.OPT_INDENT_2).decode() if args.json else render(plan))
    return 0
