"""Parse an OpenAI-style request body once, and validate what the gateway relies on."""
from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import StreamReader, web

from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType


@dataclass(slots=True)
class ParsedRequest:
    kind: str  # "chat" | "completions" | "responses" | one of PASSTHROUGH_KINDS
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


_REQUIRED = {"chat": ("messages", list), "completions": ("prompt", (str, list)), "responses": ("input", (str, list)),
             "detokenize": ("tokens", list), "embeddings": ("input", (str, list))}
# endpoints whose answer is one JSON object (never a stream), relayed as the pool sends it
PASSTHROUGH_KINDS = ("tokenize", "detokenize", "embeddings", "score", "rerank")
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,%d}" % MAX_REQUEST_ID).fullmatch
MAX_JSON_DEPTH = 64  # nesting of a request body's arrays and objects
MAX_MODEL_NAME = 256
# choices one request may ask for (OpenAI's own bound on ``n``): a pool asked for a billion builds
# a billion sequences (vLLM has no such bound by default), and the gateway would carry that request
# to every candidate in turn, taking each one down
MAX_CHOICES = 128


def request_id(header: str | None, new_id: Callable[[], str]) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is short and plain (letters,
    digits, ``._:/+=@-``), else a fresh one.  The one validator: whatever is logged or echoed
    has been through it."""
    return header if header is not None and _REQUEST_ID(header) else new_id()


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, read in pieces as it arrives and bounded where it is read: over
    ``limit`` bytes a 413, not all of it within ``timeout_s`` a 408, compressed a 415 (nothing
    is inflated), broken framing a 400.  A refused body is not read further."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"compressed request bodies are not accepted (Content-Encoding: "
                                   f"{encoding[:32]}); send the JSON uncompressed")
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    whole_body = getattr(request, "whole_body", None)
    if whole_body is not None:  # the fast lane (gateway/front.py) reads the body itself, within its length
        return await whole_body(timeout_s)  # type: ignore[no-any-return]
    parts: list[bytes] = []
    content = request.content
    try:
        if content.is_eof():  # the whole body came with the head: nothing to wait for, no timer
            await _read_all(content, parts, limit)
        else:
            async with asyncio.timeout(timeout_s):
                await _read_all(content, parts, limit)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except (PayloadTooLarge, ConnectionError):
        raise
    except Exception as exc:  # broken chunked framing, a truncated body (RequestPayloadError, ...)
        raise BadRequest(f"the request body could not be read ({type(exc).__name__})") from None
    return b"".join(parts)


async def _read_all(content: StreamReader, parts: list[bytes], limit: int) -> None:
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)


def _too_deep(doc: object) -> bool:
    """Whether ``doc`` nests arrays/objects more than MAX_JSON_DEPTH levels (iterative)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def parse(kind: str, path: str, raw: bytes, request_id: str, new_id: Callable[[], str] | None = None,
          started: float | None = None) -> ParsedRequest:
    """The request as the gateway reads it; ``started``: the runtime clock's time it arrived."""
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    # orjson reads up to 1024 levels but writes only 254: bound it here, where it is read
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and isinstance(body, dict) and _too_deep(body):
        raise BadRequest(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    if len(model) > MAX_MODEL_NAME:  # it is logged and counted: bounded here
        raise BadRequest(f"the model name is longer than {MAX_MODEL_NAME} characters", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    if kind in PASSTHROUGH_KINDS:
        stream = False  # these answer JSON whatever the body says (the pool validates the rest)
    for name in ("n", "best_of"):
        value = body.get(name)
        if type(value) is int and value > MAX_CHOICES:
            raise BadRequest(f"'{name}' must be at most {MAX_CHOICES}, got {value}", param=name)
    if kind in _REQUIRED:
        name, types = _REQUIRED[kind]
        if name not in body:
            raise BadRequest(f"missing required parameter: '{name}'", param=name)
        if not isinstance(body[name], types):
            raise BadRequest(f"'{name}' has the wrong type", param=name)
    if started is None:
        return ParsedRequest(kind, path, raw, body, model, stream, request_id)
    return ParsedRequest(kind, path, raw, body, model, stream, request_id, started)
