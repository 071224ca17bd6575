"""``infercdn admin``: act on a running gateway through its admin API.

    infercdn admin topology [--json]          regions, pools, endpoints and their live state
    infercdn admin drain endpoint ID          no new requests to it; those in flight finish
    infercdn admin undrain endpoint ID
    infercdn admin drain pool NAME            the same for every endpoint of a pool
    infercdn admin undrain pool NAME
    infercdn admin reload                     read the config file again (as SIGHUP)

``--gateway URL`` (default: the local gateway of ``infercdn up``).  The gateway answers only
to its ``gateway.admin_networks``."""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from infercdn.commands.route import LOCAL_GATEWAY

ADMIN_HEADER = "X-Infercdn-Admin"  # as gateway.admin expects on POSTs (no import: keeps the CLI light)
TIMEOUT_S = 5.0


class AdminError(Exception):
    """The gateway refused, or could not be reached: the message says which and why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default=LOCAL_GATEWAY, help=f"the gateway's base URL (default {LOCAL_GATEWAY})")
    actions = parser.add_subparsers(dest="action", required=True)
    top = actions.add_parser("topology", help="regions, pools and endpoints with their live state")
    top.add_argument("--json", action="store_true", help="print the JSON of GET /admin/topology")
    for action, what in (("drain", "send no new requests to"), ("undrain", "route new requests again to")):
        sub = actions.add_parser(action, help=f"{what} an endpoint or every endpoint of a pool")
        sub.add_argument("kind", choices=("endpoint", "pool"))
        sub.add_argument("name", help="the endpoint id or pool name (see `infercdn admin topology`)")
    actions.add_parser("reload", help="read the gateway's config file again (as SIGHUP)")
    for sub in actions.choices.values():  # --gateway after the action too
        sub.add_argument("--gateway", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def call(base: str, method: str, path: str) -> dict[str, Any]:
    """One admin request; AdminError with the gateway's own message when it refuses."""
    headers = {ADMIN_HEADER: "1", "Content-Type": "application/json"} if method == "POST" else {}
    req = urllib.request.Request(base.rstrip("/") + path, data=b"{}" if method == "POST" else None,
                                 headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            answer: dict[str, Any] = orjson.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise AdminError(f"{method} {path}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach gateway {base}: {getattr(exc, 'reason', exc)}") from None


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def render_topology(topo: dict[str, Any]) -> str:
    g = topo["gateway"]
    where = g.get("city") or f"{g['lat']},{g['lon']}"
    lines = [f"gateway at {where} (region {g.get('region') or '-'})"]
    for region in topo["regions"]:
        lines.append(f"region {region['name']} ({region.get('city') or '?'}, {region.get('jurisdiction') or '-'}): "
                     f"{region['health']}")
        for pool in (p for p in topo["pools"] if p["region"] == region["name"]):
            flags = "".join([" by the operator" if pool["drained"] else "", " (config: draining)" if pool["draining"] else ""])
            lines.append(f"  pool {pool['name']}: {pool['health']}{flags}; {', '.join(pool['models'])}; "
                         f"tier {pool['tier']}; {pool['inflight']} in flight")
            lines.append(f"    {'endpoint':<28}{'state':<18}{'inflight':>9}{'run/wait':>10}{'kv':>6}"
                         f"{'latency':>10}{'errors':>8}")
            for ep in pool["endpoints"]:
                load = "-" if ep["running"] is None and ep["waiting"] is None else \
                    f"{_num(ep['running'])}/{_num(ep['waiting'])}"
                kv = _num(ep["kv_usage"] * 100 if ep["kv_usage"] is not None else None, 0, "%")
                lines.append(f"    {ep['id']:<28}{ep['state']:<18}{ep['inflight']:>9}{load:>10}{kv:>6}"
                             f"{_num(ep['latency_ms'], 1, ' ms'):>10}{ep['error_rate'] * 100:>7.0f}%")
    return "\n".join(lines)


def render_action(answer: dict[str, Any]) -> str:
    if "endpoint" in answer:
        what, inflight = f"endpoint {answer['endpoint']}", answer["inflight"]
    else:
        what, inflight = f"pool {answer['pool']}", answer["inflight"]
    if answer["drained"]:
        return f"{what} drained: no new requests; {inflight} in flight will finish"
    note = " (still draining: its config says `draining: true`)" if answer.get("draining_in_config") else ""
    return f"{what} undrained: new requests are routed to it again{note}"


def main(args: argparse.Namespace) -> int:
    try:
        if args.action == "topology":
            topo = call(args.gateway, "GET", "/admin/topology")
            print(orjson.dumps(topo, option=orjson.OPT_INDENT_2).decode() if args.json else render_topology(topo))
        elif args.action == "reload":
            answer = call(args.gateway, "POST", "/admin/reload")
            print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        else:
            name = urllib.parse.quote(args.name, safe="")
            print(render_action(call(args.gateway, "POST", f"/admin/{args.kind}s/{name}/{args.action}")))
    except AdminError as exc:
        print(f"infercdn admin: {exc}", file=sys.stderr)
        return 1
    return 0
