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


_WS = b" \t\r\n"


def strip_token_ids(data: bytes) -> bytes:
    """Remove ``"prompt_token_ids": [...] | null`` and ``"token_ids": [...] | null`` fields,
    whatever whitespace the pool's JSON has around separators (``", "``, ``": "``), leaving
    valid JSON: a field's own comma goes with it (the one before it, else the one after)."""
    at = data.find(b'token_ids"')
    if at < 0:
        return data
    out = []
    start = 0
    while at >= 0:
        # '"token_ids"' or '"prompt_token_ids"', else the text of some other key or value
        begin = at - 1 if data[at - 1:at] == b'"' else at - 8 if data[at - 8:at] == b'"prompt_' else -1
        colon = _skip_ws(data, at + 10)
        if begin < 0 or data[colon:colon + 1] != b":":
            at = data.find(b'token_ids"', at + 10)  # the text of a value, not a field name
            continue
        value = _skip_ws(data, colon + 1)
        end = value + 4 if data.startswith(b"null", value) else _array_end(data, value)
        if end <= 0:
            at = data.find(b'token_ids"', colon)  # not a list of ids: left as it is
            continue
        before = begin
        while before > start and data[before - 1] in _WS:
            before -= 1
        if before > start and data[before - 1:before] == b",":  # not a comma the last field took
            begin = before - 1
        else:
            after = _skip_ws(data, end)
            if data[after:after + 1] == b",":
                end = _skip_ws(data, after + 1)
        out.append(data[start:begin])
        start = end
        at = data.find(b'token_ids"', end)
    out.append(data[start:])
    return b"".join(out)


def _array_end(data: bytes, i: int) -> int:
    """The index after the JSON array starting at ``i`` (0 if there is none): a flat array of
    numbers with byte searches, anything nested or with strings by scanning it."""
    if data[i:i + 1] != b"[":
        return 0
    close = data.find(b"]", i)
    if close < 0:
        return 0
    if data.find(b"[", i + 1, close) < 0 and data.find(b'"', i, close) < 0:
        return close + 1
    depth, in_string, escaped = 0, False, False
    for j in range(i, len(data)):
        c = data[j]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x5B:
            depth += 1
        elif c == 0x5D:
            depth -= 1
            if depth == 0:
                return j + 1
    return 0


def _skip_ws(data: bytes, i: int) -> int:
    while data[i:i + 1] in (b" ", b"\t", b"\r", b"\n") and i < len(data):
        i += 1
    return i


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


class UnencodableEvent(ValueError):
    """An upstream event nests deeper than JSON can be written again (orjson: 254 levels)."""


def encode_event(doc: dict[str, Any]) -> bytes:
    try:
        return DATA + orjson.dumps(doc) + b"\n\n"
    except TypeError as exc:
        raise UnencodableEvent(f"an upstream event the gateway cannot write again ({exc})") from None

