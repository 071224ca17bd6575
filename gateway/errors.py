"""The gateway's one exception tree, translated to OpenAI's error format at the boundary.

    GatewayError                      → {"error": {"message", "type", "param", "code"}}
    ├── BadRequest (400)              invalid JSON, missing/invalid fields
    ├── Unauthorized (401)            missing or unknown API key
    ├── ModelNotFound (404)           no pool serves the model (for this tenant)
    ├── RequestTimeout (408)          body not received within gateway.body_timeout_s
    ├── PayloadTooLarge (413)         body over gateway.max_body_bytes
    ├── UnsupportedMediaType (415)    a compressed (Content-Encoding) body
    ├── RateLimited (429)             every candidate throttled; carries Retry-After
    └── Unavailable (503)             no candidate could serve; carries the attempts

Upstream failures are not exceptions here: the attempt loop records them as routing
``Outcome``s and only raises ``Unavailable`` when the plan is exhausted."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        return web.Response(status=self.status, body=orjson.dumps(self.body()),
                            content_type="application/json", headers=headers)


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        resp = super().response(extra_headers)
        resp.force_close()  # the rest of the body is not waited for
        return resp


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    limit = "requests"  # which tenant limit refused: requests | concurrency | tokens (a metric label)


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "no_healthy_upstream"


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_error_event(message: str, type_: str = "upstream_error", code: str | None = "stream_interrupted") -> bytes:
    """An in-band error for a stream that already started: never a truncated success."""
    return b"data: " + orjson.dumps(error_body(message, type_, None, code)) + b"\n\n"


def openai_error_bytes(status: int, body: bytes) -> bytes:
    """A pool's 4xx body as an OpenAI-format error: relayed as it is when it already is one,
    vLLM's older ``{"object": "error", "message": ...}`` reshaped, anything else replaced."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and set(doc) == {"error"} and _plain(err):
            return body
        source = err if isinstance(err, dict) else doc
        message = source.get("message")
        if isinstance(message, str) and message:
            type_ = source.get("type")
            code, param = source.get("code"), source.get("param")
            return orjson.dumps(error_body(message[:4000], type_ if isinstance(type_, str) else "invalid_request_error",
                                           param if isinstance(param, str) else None,
                                           code if isinstance(code, (str, int)) and not isinstance(code, bool) else None))
    return orjson.dumps(error_body(f"the upstream refused the request ({status})", "invalid_request_error", None,
                                   "upstream_refused"))


def _plain(err: dict[str, Any]) -> bool:
    """An OpenAI error object with fields of the documented types only."""
    return (isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
            and "param" in err and (err["param"] is None or isinstance(err["param"], str))
            and "code" in err and (err["code"] is None or isinstance(err["code"], (str, int))))
