"""Reading the usage block of an OpenAI/vLLM response without parsing all of it."""
from __future__ import annotations

from typing import Any

import orjson


def find_usage(data: bytes) -> dict[str, Any] | None:
    """The usage of the last SSE event (or JSON body) in ``data`` that carries one."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    start = data.rfind(b"data: ", 0, at)
    if start < 0:  # a JSON body: its usage is a top-level field, most often near the end
        usage = _tail_usage(data, at)
        if usage is not None:
            return usage
    body = data[start + 6:] if start >= 0 else data
    end = body.find(b"\n\n")
    if end >= 0:
        body = body[:end]
    try:
        doc = orjson.loads(body)
        # a name of its own, typed Any: what the pool sent is checked here, not by the name's type
        # (compiled, binding a non-dict to `usage` would raise a TypeError)
        found: Any = doc.get("usage")
        if found is None and isinstance(doc.get("response"), dict):  # a Responses API event
            found = doc["response"].get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, dict) else None


def _tail_usage(data: bytes, at: int) -> dict[str, Any] | None:
    """The usage of a JSON body read from ``"usage"`` to the end as an object of its own (what
    follows it is parsed, not the whole answer); None when that is not JSON (the match was not
    a top-level field), and the caller reads the whole body."""
    try:
        doc = orjson.loads(b"{" + data[at:])
    except orjson.JSONDecodeError:
        return None
    usage = doc.get("usage") if isinstance(doc, dict) else None
    return usage if isinstance(usage, dict) else None

