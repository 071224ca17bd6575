"""Parse an OpenAI-style request body once, and validate what the gateway relies on."""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge


@dataclass(slots=True)
class ParsedRequest:
    kind: str  # "chat" | "completions"
    path: str  # upstream path, e.g. "/v1/chat/completions"
    raw: bytes
    body: dict[str, Any]
    model: str
    stream: bool
    request_id: str
    started: float = field(default_factory=time.monotonic)
    _bodies: dict[str, bytes] = field(default_factory=dict)

    def body_for(self, upstream_model: str) -> bytes:
        """The bytes to send upstream: the original body unless the pool serves the model
        under another name (then ``model`` is rewritten, once per name)."""
        if upstream_model == self.model:
            return self.raw
        cached = self._bodies.get(upstream_model)
        if cached is None:
            cached = self._bodies[upstream_model] = orjson.dumps({**self.body, "model": upstream_model})
        return cached

    def as_stream(self) -> ParsedRequest:
        """The same request asking for a stream with a usage chunk (for an assembled answer)."""
        body = {**self.body, "stream": True, "stream_options": {"include_usage": True}}
        return ParsedRequest(self.kind, self.path, orjson.dumps(body), body, self.model, True, self.request_id,
                             self.started)

    def body_with(self, extra: dict[str, Any]) -> bytes:
        """The body with ``extra`` fields set (re-encoded; cached per distinct ``extra``)."""
        key = repr(sorted(extra.items()))
        cached = self._bodies.get(key)
        if cached is None:
            cached = self._bodies[key] = orjson.dumps({**self.body, **extra})
        return cached


def id_factory() -> Callable[[], str]:
    """Request ids: a random prefix per gateway and a counter (cheaper than uuid4 per request)."""
    prefix = os.urandom(6).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):010x}"


_REQUIRED = {"chat": ("messages", list), "completions": ("prompt", (str, list))}


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    try:
        raw = await request.content.read(limit + 1) if length is None else await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return raw


def parse(kind: str, path: str, raw: bytes, request_id: str | None, new_id: Callable[[], str]) -> ParsedRequest:
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    name, types = _REQUIRED[kind]
    if name not in body:
        raise BadRequest(f"missing required parameter: '{name}'", param=name)
    if not isinstance(body[name], types):
        raise BadRequest(f"'{name}' has the wrong type", param=name)
    rid = request_id if request_id and len(request_id) <= 128 and request_id.isprintable() else new_id()
    return ParsedRequest(kind, path, raw, body, model, stream, rid)
