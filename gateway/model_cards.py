"""What ``/v1/models`` says of each model: the gateway's entry plus what its pools report
(``max_model_len``, ``root``, ``parent``, ``permission``, as vLLM lists them).

A background task asks one endpoint of each pool for its ``/v1/models`` every
``CARDS_INTERVAL_S``: bounded in time (the health probe timeout), in bytes (``MAX_MODELS_BYTES``)
and in what is kept (those fields of the models the pool is configured to serve, each entry at
most ``MAX_CARD_BYTES`` encoded).  Until a pool has answered, the entry has the gateway's fields
only."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.background import every, read_capped
from gateway.state import MODEL_CARDS, RUNTIME, SNAPSHOT

CARDS_INTERVAL_S = 60.0
MAX_MODELS_BYTES = 1024 * 1024
MAX_CARD_BYTES = 16 * 1024
KEPT = ("root", "parent", "max_model_len", "permission")


def card_for(app: web.Application, model: str) -> dict[str, Any]:
    """The ``/v1/models`` entry of ``model``."""
    reported = app.get(MODEL_CARDS, {}).get(model, {})
    return {"id": model, "object": "model", "created": int(app[RUNTIME].wall()), "owned_by": "infercdn", **reported}


def cards(app: web.Application, models: list[str]) -> list[dict[str, Any]]:
    return [card_for(app, m) for m in models]


def kept_fields(doc: object, served: dict[str, str]) -> dict[str, dict[str, Any]]:
    """From a pool's ``/v1/models`` answer: the kept fields of each model it serves for us
    (``served``: the pool's model name -> ours), under our name."""
    out: dict[str, dict[str, Any]] = {}
    data = doc.get("data") if isinstance(doc, dict) else None
    for entry in data if isinstance(data, list) else ():
        name = served.get(entry.get("id")) if isinstance(entry, dict) and isinstance(entry.get("id"), str) else None
        if name is None:
            continue
        fields = {k: entry[k] for k in KEPT if k in entry}
        try:
            if len(orjson.dumps(fields)) <= MAX_CARD_BYTES:
                out[name] = fields
        except TypeError:  # nested deeper than JSON can be written again
            continue
    return out


async def _fetch(session: aiohttp.ClientSession, url: str, timeout_s: float) -> object:
    try:
        async with asyncio.timeout(timeout_s), session.get(url + "/v1/models") as resp:
            body = await read_capped(resp, MAX_MODELS_BYTES)
            if resp.status != 200 or body is None:
                return None
        return orjson.loads(body)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, orjson.JSONDecodeError):
        return None


async def cards_round(app: web.Application, session: aiohttp.ClientSession) -> None:
    """One ``/v1/models`` request per pool (its first endpoint that answers)."""
    snapshot = app[SNAPSHOT].current
    timeout_s = snapshot.config.health.timeout_s
    found: dict[str, dict[str, Any]] = {}
    for pool in snapshot.topology.pools:
        served = {upstream: ours for ours, upstream in pool.models.items() if ours not in found}
        if not served:
            continue
        for ep in list(pool.endpoints)[:2]:
            doc = await _fetch(session, ep.url, timeout_s)
            if doc is not None:
                found.update(kept_fields(doc, served))
                break
    app[MODEL_CARDS].update(found)


async def model_cards(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the background refresh of what pools report of their models."""
    app[MODEL_CARDS] = {}
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as session, \
            every(CARDS_INTERVAL_S, lambda: cards_round(app, session), "model cards", clock=app[RUNTIME].clock):
        yield
