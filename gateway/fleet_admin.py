"""Admin API of the open fleet: the registry as read, the canary's verdicts, and an operator's
way to clear a quarantine.

POSTs here change routing, so a browser must not be able to send them from another site: they
need ``Content-Type: application/json`` or the ``X-Infercdn-Admin`` header (neither can be set
by a plain HTML form), on top of ``gateway.admin_networks``."""
from __future__ import annotations

import orjson
from aiohttp import web

from gateway.canary import clear
from gateway.errors import error_body
from gateway.state import CANARY, REGISTRY, RUNTIME

def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def admin_registry(request: web.Request) -> web.Response:
    """GET /admin/registry: registered pools that count, refused announcements, read errors."""
    state = request.app.get(REGISTRY)
    return _json(state.as_json(request.app[RUNTIME].wall()) if state is not None else {"pools": [], "refused": []})


async def admin_canary(request: web.Request) -> web.Response:
    """GET /admin/canary: each endpoint's last verdict (with evidence) and the references."""
    state = request.app.get(CANARY)
    return _json(state.as_json(request.app[RUNTIME].clock()) if state is not None else {"endpoints": {}, "references": {}})


async def admin_unquarantine(request: web.Request) -> web.Response:
    """POST /admin/endpoints/{id}/unquarantine: traffic again until the canary's next verdict."""
    eid = request.match_info["id"]
    was = clear(request.app, eid)
    if was is None:
        return _json(error_body(f"endpoint {eid!r} is not held", "invalid_request_error", "id", "not_held"), 404)
    return _json({"endpoint": eid, "cleared": was})


def fleet_routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/admin/registry", admin_registry),
        web.get("/admin/canary", admin_canary),
        web.post("/admin/endpoints/{id}/unquarantine", admin_unquarantine),
    ]
