"""Runtime actions of the admin API, and the fleet's live state as JSON.

    POST /admin/endpoints/{id}/drain|undrain   one endpoint: no new requests / new requests again
    POST /admin/pools/{name}/drain|undrain     every endpoint of a pool
    GET  /admin/topology                       regions, pools and endpoints with their live state

A drain stops new requests at once (the planner never picks a drained endpoint, not even in
panic); requests in flight finish.  Drains live with the observations, so they survive reloads
for the endpoints and pools that remain and end when those leave the config.  Under
``--workers N`` the worker that answered shares the drain with the others (``gateway/host_share.py``),
and ``inflight`` counts the requests of every worker.

Like the rest of ``/admin/*`` these answer only to ``gateway.admin_networks``.  A POST must
also carry a JSON body (``Content-Type: application/json``) or the ``X-Infercdn-Admin`` header:
a cross-site form can send neither, so a page the operator visits cannot drain the fleet."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import error_body
from gateway.host_share import peer_inflight, share_drain
from gateway.state import OBSERVATIONS, SNAPSHOT, RoutingSnapshot
from routing.observations import EndpointView, Observations
from routing.topology import Endpoint

log = logging.getLogger("infercdn.admin")

ADMIN_HEADER = "X-Infercdn-Admin"
MAX_ADMIN_BODY = 64 * 1024


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    return _json(error_body(message, "invalid_request_error", param, code), status)


def endpoint_state(view: EndpointView) -> str:
    """One word for the page and the CLI, most important first."""
    if view.drained:
        return "drained"
    if view.probe_draining:
        return "draining"
    if view.hold is not None:
        return view.hold  # the canary: "quarantined" or "canary_pending"
    if not view.healthy:
        return "unhealthy"
    if view.ejected:
        return "ejected"
    if view.breaker != "closed":
        return f"breaker_{view.breaker}"
    if view.throttled_until is not None:
        return "throttled"
    return "healthy"


def _endpoint(ep: Endpoint, view: EndpointView, elsewhere: int = 0) -> dict[str, Any]:
    return {"id": ep.id, "url": ep.url, "weight": ep.weight, "state": endpoint_state(view),
            "healthy": view.healthy, "ejected": view.ejected, "breaker": view.breaker,
            "drained": view.drained, "probe_draining": view.probe_draining, "hold": view.hold,
            "throttled": view.throttled_until is not None, "inflight": view.inflight + elsewhere,
            "running": view.running, "waiting": view.waiting, "kv_usage": view.kv_usage,
            "latency_ms": round(view.latency_ms, 1) if view.latency_ms is not None else None,
            "error_rate": round(view.error_rate, 3), "consecutive_failures": view.consecutive_failures}


def _health(states: list[str], drained: bool) -> str:
    """A pool's (or region's) colour: every endpoint usable, some, or none."""
    if drained:
        return "drained"
    usable = sum(s in ("healthy", "throttled") for s in states)
    if states and usable == len(states):
        return "healthy"
    return "degraded" if usable else "down"


def topology(snapshot: RoutingSnapshot, obs: Observations, peers: Mapping[str, int] | None = None
             ) -> dict[str, Any]:
    """The fleet as the gateway sees it now: JSON-ready, for GET /admin/topology and /status;
    ``peers``: requests in flight on the host's other workers by endpoint (``--workers``)."""
    topo = snapshot.topology
    peers = peers or {}
    pools = []
    for pool in topo.pools:
        eps = [_endpoint(ep, obs.view(ep.id), peers.get(ep.id, 0)) for ep in pool.endpoints]
        drained = pool.name in obs.drained_pools
        pools.append({"name": pool.name, "region": pool.region, "models": sorted(pool.models), "tier": pool.tier,
                      "tags": sorted(pool.tags), "draining": pool.draining, "drained": drained,
                      "health": _health([e["state"] for e in eps], pool.draining or drained),
                      "inflight": sum(e["inflight"] for e in eps), "endpoints": eps})
    regions = []
    for region in topo.regions.values():
        mine = [p for p in pools if p["region"] == region.name]
        states = [e["state"] for p in mine if p["health"] != "drained" for e in p["endpoints"]]
        loc = region.location
        regions.append({"name": region.name, "lat": loc.lat, "lon": loc.lon, "city": loc.city,
                        "jurisdiction": region.jurisdiction, "tags": sorted(region.tags),
                        "pools": [p["name"] for p in mine],
                        "health": _health(states, not states) if mine else "empty"})
    g = topo.gateway_location
    return {"gateway": {"region": topo.gateway_region, "lat": g.lat, "lon": g.lon, "city": g.city},
            "regions": regions, "pools": pools}


async def admin_topology(request: web.Request) -> web.Response:
    return _json(topology(request.app[SNAPSHOT].current, request.app[OBSERVATIONS], peer_inflight(request.app)))


async def _refusal(request: web.Request) -> web.Response | None:
    """None when the POST carries the admin header or a JSON body (object or empty); the
    header-or-JSON rule itself is admin_guard's (gateway/handlers.py), for every admin POST."""
    if ADMIN_HEADER in request.headers:
        return None
    raw = await request.content.read(MAX_ADMIN_BODY + 1)
    if len(raw) > MAX_ADMIN_BODY:
        return _error(413, f"admin request bodies are at most {MAX_ADMIN_BODY} bytes", "request_too_large")
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        return _error(400, f"the body is not valid JSON: {exc}", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object", "invalid_json")
    return None


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "-"


async def admin_endpoint_action(request: web.Request) -> web.Response:
    """POST /admin/endpoints/{id}/drain|undrain."""
    refused = await _refusal(request)
    if refused is not None:
        return refused
    eid, action = request.match_info["id"], request.match_info["action"]
    obs = request.app[OBSERVATIONS]
    if not obs.drain(eid, action == "drain"):
        return _error(404, f"no endpoint {eid!r} in the running config (see GET /admin/topology)", "not_found", "id")
    share_drain(request.app, "endpoint", eid, action == "drain")
    log.warning("endpoint %s %sed by %s", eid, action, _peer(request))
    view = obs.view(eid)
    return _json({"endpoint": eid, "action": action, "drained": view.drained, "state": endpoint_state(view),
                  "inflight": view.inflight + (peer_inflight(request.app) or {}).get(eid, 0)})


async def admin_pool_action(request: web.Request) -> web.Response:
    """POST /admin/pools/{name}/drain|undrain."""
    refused = await _refusal(request)
    if refused is not None:
        return refused
    name, action = request.match_info["name"], request.match_info["action"]
    obs, snapshot = request.app[OBSERVATIONS], request.app[SNAPSHOT].current
    if not obs.drain_pool(name, action == "drain"):
        return _error(404, f"no pool {name!r} in the running config (see GET /admin/topology)", "not_found", "name")
    share_drain(request.app, "pool", name, action == "drain")
    log.warning("pool %s %sed by %s", name, action, _peer(request))
    pool = snapshot.topology.pool(name)
    elsewhere = peer_inflight(request.app) or {}
    return _json({"pool": name, "action": action, "drained": name in obs.drained_pools,
                  "draining_in_config": pool.draining,
                  "inflight": sum(obs.view(ep.id).inflight + elsewhere.get(ep.id, 0) for ep in pool.endpoints)})


def admin_routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/admin/topology", admin_topology),
        web.post("/admin/endpoints/{id}/{action:drain|undrain}", admin_endpoint_action),
        web.post("/admin/pools/{name}/{action:drain|undrain}", admin_pool_action),
    ]
