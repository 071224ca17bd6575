"""Byte-level helpers for OpenAI/vLLM server-sent events.

The hot path never parses JSON: events are cut at ``\\n\\n`` and the token-id fields that the
gateway asked for (for exact resume) are removed with byte searches.  Full parsing happens
only when a stream must be resumed."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DATA = b"data: "
DONE_EVENT = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def split_complete(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """(complete events, incomplete rest) of ``pending + chunk``."""
    buf = pending + chunk if pending else chunk
    cut = buf.rfind(b"\n\n")
    if cut < 0:
        return b"", buf
    cut += 2
    return buf[:cut], buf[cut:]


def strip_token_ids(data: bytes) -> bytes:
    """Remove ``"prompt_token_ids": [...] | null`` and ``"token_ids": [...] | null`` fields."""
    at = data.find(b'token_ids":')
    if at < 0:
        return data
    out = []
    start = 0
    while at >= 0:
        begin = at - 1 if data[at - 1:at] == b'"' else at - 8  # '"token_ids"' or '"prompt_token_ids"'
        value = at + 11
        end = value + 4 if data.startswith(b"null", value) else data.find(b"]", value) + 1
        if end <= 0:
            break
        if data[begin - 1:begin] == b",":
            begin -= 1
        elif data[end:end + 1] == b",":
            end += 1
        out.append(data[start:begin])
        start = end
        at = data.find(b'token_ids":', end)
    out.append(data[start:])
    return b"".join(out)


def events(data: bytes) -> Iterator[bytes]:
    """The payloads of the ``data:`` events in ``data`` (comments and blank lines skipped)."""
    for block in data.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(DATA):
                yield line[len(DATA):]
            elif line.startswith(b"data:"):
                yield line[5:].lstrip()


def parse_event(payload: bytes) -> dict[str, Any] | None:
    """A JSON event as a dict; None for ``[DONE]`` or anything malformed."""
    if payload == b"[DONE]":
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def encode_event(doc: dict[str, Any]) -> bytes:
    return DATA + orjson.dumps(doc) + b"\n\n"

