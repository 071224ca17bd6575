"""HTTP handlers: the OpenAI endpoints, probes of the gateway itself, metrics, admin."""
from __future__ import annotations

import asyncio
import zlib
from ipaddress import ip_network
from typing import Any

import orjson
from aiohttp import web

from gateway import limits
from gateway.admin import ADMIN_HEADER, admin_routes
from gateway.access import EXCHANGE, Note
from gateway.access import line as access_line
from gateway.auth import check_model
from gateway.config import ConfigError
from gateway.deadlines import candidate_deadlines
from gateway.endpoints import ROUTED, allowed_methods, method_not_allowed, own_routes
from gateway.errors import GatewayError, ModelNotFound, RateLimited, error_body
from gateway.model_cards import cards
from gateway.quota import QUOTA_HEADERS, count_usage, estimate_prompt_tokens
from gateway.reload import CONFIG_PATH, reload_config
from gateway.request import ParsedRequest, parse, read_body, request_id
from gateway.status import status_routes
from gateway.traffic import record_exchange
from gateway.state import (ACCESS_LOG, DRAINING, LOCATOR, METRICS, OBSERVATIONS, PROXY, RUNTIME, SHARED_LIMITS, SNAPSHOT,
                           TRAFFIC)
from routing.locate import parse_ip
from routing.plan import RequestContext
from routing.topology import Location


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def client_location(request: web.Request, app: web.Application | None = None) -> tuple[str | None, Location]:
    app = app if app is not None else request.app
    locator = app[LOCATOR]
    peer = request.transport.get_extra_info("peername") if request.transport else None
    header = app[SNAPSHOT].current.config.gateway.forwarded_header
    # every line of the header, as one list (RFC 7230 section 3.2.2)
    return locator.place(peer[0] if peer else None, request.headers.getall(header, ()), header == "forwarded")


async def generate(request: web.Request, kind: str, path: str) -> web.StreamResponse:
    """A generation request (chat, completions and the routed kinds), from aiohttp's routes or
    the fast lane (gateway/front.py)."""
    note = Note(kind)
    try:
        response = await _serve(request, kind, path, note)
        note.status = response.status
        return response
    except asyncio.CancelledError:
        note.status = 499  # the client left first (nginx's convention)
        raise
    finally:
        app = request.app
        log = app[ACCESS_LOG]
        if log.enabled:
            log.write(access_line(request, note))
        ex = request.pop(EXCHANGE, None)  # the exchange holds the request: no cycle left for the collector
        if ex is not None:
            record_exchange(app[TRAFFIC], ex)  # the fleet page's live traffic per region


async def _serve(request: web.Request, kind: str, path: str, note: Note) -> web.StreamResponse:
    app = request.app
    snapshot = app[SNAPSHOT].current
    runtime = app[RUNTIME]
    rid = note.request_id = request_id(request.headers.get("X-Request-Id"), runtime.new_id)
    shared = app[SHARED_LIMITS]
    metrics = app[METRICS]
    g = snapshot.config.gateway
    try:
        tenant = snapshot.auth.tenant(request.headers.get("Authorization"))
        note.tenant = tenant.cfg.name
        raw = await read_body(request, g.max_body_bytes, g.body_timeout_s)
        req = parse(kind, path, raw, rid, started=runtime.clock())
        note.model = req.model
        check_model(tenant, req.model)
        if req.model not in snapshot.models:
            raise ModelNotFound(f"The model '{req.model}' does not exist or is not served by any pool",
                                param="model")
        ticket = await limits.admit(shared, tenant, asyncio.get_running_loop().time(),
                                    estimate_prompt_tokens(req.kind, req.body))
        request[QUOTA_HEADERS] = ticket.quota.headers()
    except GatewayError as exc:
        note.error = str(exc.code or exc.type)
        if note.tenant is not None:  # the tenant's x-ratelimit-* headers; a 429 brings its own
            request[QUOTA_HEADERS] = limits.peek(shared, tenant, asyncio.get_running_loop().time())
        if isinstance(exc, RateLimited):
            metrics.of(metrics.tenant_limited, tenant.cfg.name, exc.limit).inc()
        _count_rejection(request, exc, note.model if note.model in snapshot.models else "-")
        return exc.response({"x-request-id": rid})
    try:
        note.client_ip, location = client_location(request, app)
        t = tenant.cfg
        prefix = prefix_hash(req) if snapshot.config.routing.balancer == "prefix_affinity" else None
        ctx = RequestContext(model=req.model, client=location, required_tags=tenant.required_tags,
                             allowed_jurisdictions=tenant.jurisdictions, prefix_hash=prefix, policy=t.policy,
                             cost_slack_ms=t.cost_slack_ms)
        return await app[PROXY].serve(request, req, snapshot.planner, snapshot.config, ctx, tenant.models)
    except GatewayError as exc:
        note.error = str(exc.code or exc.type)
        return exc.response({"x-request-id": req.request_id})
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client's connection closes; the relay turns a
        # write to a closed client into the same cancellation
        metrics.of(metrics.client_disconnects, req.model).inc()
        raise
    finally:
        limits.done(shared, tenant, ticket, count_usage(request, metrics, tenant.cfg.name, ticket))


def _count_rejection(request: web.Request, exc: GatewayError, model: str) -> None:
    """A request the gateway answered itself (401, 400, 408, 413, 415, 429, 404): in
    infercdn_requests_total by status, and by error code (a requested model that is not
    served is counted as "-": the label is not the client's to choose)."""
    m = request.app[METRICS]
    m.of(m.requests, model, "-", str(exc.status)).inc()
    m.of(m.rejections, str(exc.status), str(exc.code or exc.type)).inc()


PREFIX_BYTES = 1024


def prefix_hash(req: ParsedRequest) -> int:
    """A stable hash of the start of the prompt: requests that share it land on the same
    endpoint (bounded load), where vLLM's prefix cache already holds it."""
    head = req.body.get("messages") if req.kind == "chat" else req.body.get("prompt")
    return zlib.crc32(orjson.dumps(head)[:PREFIX_BYTES])


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, "chat", "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, "completions", "/v1/completions")


def _routed(kind: str, path: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await generate(request, kind, path)
    return handler


def _healthy_models(request: web.Request, allowed: tuple[str, ...] = ()) -> list[str]:
    snapshot, obs = request.app[SNAPSHOT].current, request.app[OBSERVATIONS]
    models: set[str] = set()
    for pool in snapshot.topology.pools:
        if pool.draining or pool.name in obs.drained_pools:
            continue
        if any(_usable(obs.view(ep.id)) and obs.held(ep.id) is None for ep in pool.endpoints):
            models.update(pool.models)
    return sorted(models & set(allowed) if allowed else models)


def _usable(view: object) -> bool:
    return bool(view.healthy) and not view.ejected and not view.drained


def allowed_models(request: web.Request) -> list[str]:
    """The models this caller may use now (raises the auth error where a key is needed)."""
    try:
        tenant = request.app[SNAPSHOT].current.auth.tenant(request.headers.get("Authorization"))
    except GatewayError as exc:
        _count_rejection(request, exc, "-")
        raise
    return _healthy_models(request, tenant.cfg.models)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the models this caller may use (a key is needed where one is required),
    with what their pools report of them (gateway.model_cards)."""
    try:
        models = allowed_models(request)
    except GatewayError as exc:
        return exc.response()
    return _json({"object": "list", "data": cards(request.app, models)})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[DRAINING].since is not None:
        return _json({"status": "draining", "models": []}, 503)
    models = _healthy_models(request)
    return _json({"status": "ready" if models else "no healthy pool", "models": models},
                 200 if models else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _peer_in(request: web.Request, nets: tuple[str, ...]) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    ip = parse_ip(peer[0] if peer else None)
    return ip is not None and any(ip.version == n.version and ip in n for n in map(ip_network, nets))


ADMIN_PATHS = ("/admin/", "/status")  # the admin API and the fleet page
def _cross_site_safe(request: web.Request) -> bool:
    """A state-changing admin call carries JSON or the admin header: neither can be sent by
    a cross-site form or a no-CORS fetch, so a browser on the admin network cannot be used."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return True
    return request.content_type == "application/json" or ADMIN_HEADER in request.headers


@web.middleware
async def admin_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    g = request.app[SNAPSHOT].current.config.gateway
    if request.path.startswith(ADMIN_PATHS):
        if not _peer_in(request, g.admin_networks):
            return _json(error_body("the admin API is not available from this address", "permission_error",
                                    None, "forbidden"), 403)
        if not _cross_site_safe(request):
            return _json(error_body(f"send admin calls with Content-Type: application/json or an {ADMIN_HEADER} "
                                    "header", "invalid_request_error", None, "admin_header_required"), 415)
    elif request.path == "/metrics" and not _peer_in(request, g.metrics_networks or g.admin_networks):
        return _json(error_body("/metrics is not available from this address", "permission_error",
                                None, "forbidden"), 403)
    return await handler(request)


async def admin_reload(request: web.Request) -> web.Response:
    """POST /admin/reload: read the config file again and swap the routing snapshot."""
    if CONFIG_PATH not in request.app:
        return _json(error_body("this gateway was not started from a config file", "invalid_request_error"), 409)
    try:
        return _json(reload_config(request.app))
    except ConfigError as exc:
        return _json(error_body("; ".join(exc.lines()), "invalid_request_error", None, "invalid_config"), 400)


async def admin_plan(request: web.Request) -> web.Response:
    """GET /admin/plan?model=M[&ip=IP]: the plan and its explanation, as `infercdn route` prints."""
    snapshot = request.app[SNAPSHOT].current
    model = request.query.get("model") or next(iter(sorted(snapshot.models)), "")
    locator = request.app[LOCATOR]
    ip = request.query.get("ip") or client_location(request)[0]
    plan = snapshot.planner.plan(RequestContext(model=model, client=locator.locate(ip)))
    return _json({"ip": ip, **plan.explain(candidate_deadlines(snapshot.config, model, request.app[OBSERVATIONS]))})


async def admin_observations(request: web.Request) -> web.Response:
    return _json(request.app[OBSERVATIONS].snapshot())


async def not_found(request: web.Request) -> web.Response:
    allowed = await allowed_methods(request)
    if allowed:
        return method_not_allowed(request, allowed)
    return _json(error_body(f"unknown path {request.path}", "invalid_request_error", None, "not_found"), 404)


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/completions", completions),
        web.get("/v1/models", list_models),
        *(web.post(path, _routed(kind, path)) for kind, path in ROUTED),
        *own_routes(),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/admin/plan", admin_plan),
        web.get("/admin/observations", admin_observations),
        web.post("/admin/reload", admin_reload),
        *admin_routes(),
        *status_routes(),
        web.route("*", "/{tail:.*}", not_found),
    ]
