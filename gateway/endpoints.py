"""The endpoints clients call besides chat and completions: which the gateway routes to pools
by the request's model, and which it answers for itself (vLLM's ``/health`` and ``/version``,
``/v1/models/{id}``, a 405 with ``Allow`` for a method a known path does not take)."""
from __future__ import annotations

from importlib import metadata

import orjson
from aiohttp import web

from gateway.errors import GatewayError, error_body
from gateway.model_cards import card_for

# (kind, path): POSTed with a "model" and routed like completions; the pools answer them
ROUTED = (("responses", "/v1/responses"), ("tokenize", "/tokenize"), ("detokenize", "/detokenize"),
          ("embeddings", "/v1/embeddings"), ("score", "/v1/score"), ("rerank", "/v1/rerank"))


def _version() -> str:
    try:
        return metadata.version("infercdn")
    except metadata.PackageNotFoundError:
        return "0+unknown"


VERSION = _version()


async def health(_: web.Request) -> web.Response:
    """vLLM's liveness probe, answered for the gateway itself (200, empty body, as vLLM)."""
    return web.Response(status=200)


async def version(_: web.Request) -> web.Response:
    """vLLM's ``/version``, answered with the gateway's own version."""
    return web.Response(body=orjson.dumps({"version": VERSION}), content_type="application/json")


async def model_card(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: the entry ``/v1/models`` lists for the model, or a 404 (OpenAI's
    ``model_not_found``) when this caller has no such model."""
    from gateway.handlers import allowed_models  # the tenant check lives with /v1/models

    model = request.match_info["model"]
    try:
        allowed = allowed_models(request)
    except GatewayError as exc:
        return exc.response()
    if model in allowed:
        card = card_for(request.app, model)
        return web.Response(body=orjson.dumps(card), content_type="application/json")
    body = error_body(f"The model '{model}' does not exist", "invalid_request_error", "model", "model_not_found")
    return web.Response(status=404, body=orjson.dumps(body), content_type="application/json")


def own_routes() -> list[web.AbstractRouteDef]:
    return [web.get("/health", health), web.get("/version", version), web.get("/v1/models/{model:.+}", model_card)]


async def allowed_methods(request: web.Request) -> list[str]:
    """The methods a known path takes (none: an unknown path); the catch-all route is not one."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical == "/{tail}":
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    return sorted(m for m in allowed if m not in ("HEAD", "*"))


def method_not_allowed(request: web.Request, allowed: list[str]) -> web.Response:
    """A 405 with ``Allow``, as vLLM answers (its body is FastAPI's ``{"detail": ...}``; the
    gateway's is an OpenAI error, like every other answer it makes itself)."""
    body = error_body(f"method {request.method} is not allowed on {request.path} (allowed: {', '.join(allowed)})",
                      "invalid_request_error", None, "method_not_allowed")
    return web.Response(status=405, body=orjson.dumps(body), content_type="application/json",
                        headers={"Allow": ", ".join(allowed)})

