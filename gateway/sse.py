"""Byte-level helpers for OpenAI/vLLM server-sent events.

The hot path never parses JSON: events are cut at ``\\n\\n`` and the token ids that the
gateway asked for (for exact resume) are set back to the nulls vLLM sends unasked, with byte
searches.  Full parsing happens only when a stream must be resumed."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

DATA = b"data: "
DONE_EVENT = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
# the field as vLLM writes it after the first event; a pattern that starts with a literal (no
# group) lets the regex engine search for it instead of trying every position
_COMPACT_IDS = re.compile(rb'"token_ids":\[[^\[\]"]*\]')
_COMPACT_PROMPT_IDS = re.compile(rb'"prompt_token_ids":\[[^\[\]"]*\]')  # the first event's
_NOT_NULL = re.compile(rb'token_ids"(?!:null)')  # a field (or a value's text) not set to null


def null_token_ids(data: bytes, prompt: bool = True) -> bytes:
    """Set the lists of ``"prompt_token_ids"`` and ``"token_ids"`` fields to ``null``, whatever
    whitespace the pool's JSON has around separators: what vLLM sends when nobody asked for
    ids (it always sends both fields, null unless ``return_token_ids`` is set), so a client
    gets its own request's answer although the gateway asked for the ids.  Any other value
    (null, a string) is left as it is.  ``prompt``: the prompt's ids may be in ``data`` (vLLM
    sends them with the first event only; the one-pass form is then skipped for them, and a
    later field of theirs still takes the careful scan)."""
    at = data.find(b'token_ids"')
    if at < 0:
        return data
    compact = _compact_ids(data, prompt)
    if compact is not None:
        return compact
    out = []
    start = 0
    while at >= 0:
        # '"token_ids"' or '"prompt_token_ids"', else the text of some other key or value
        named = data[at - 1:at] == b'"' or data[at - 8:at] == b'"prompt_'
        colon = _skip_ws(data, at + 10)
        if not named or data[colon:colon + 1] != b":":
            at = data.find(b'token_ids"', at + 10)  # the text of a value, not a field name
            continue
        value = _skip_ws(data, colon + 1)
        end = _array_end(data, value)
        if end <= 0:
            at = data.find(b'token_ids"', colon)  # null or not a list of ids: left as it is
            continue
        out.append(data[start:value])
        out.append(b"null")
        start = end
        at = data.find(b'token_ids"', end)
    out.append(data[start:])
    return b"".join(out)


def _compact_ids(data: bytes, prompt: bool = True) -> bytes | None:
    """``null_token_ids`` of a read whose id fields are all written compactly by vLLM: flat
    lists ``"token_ids":[n,...]`` and ``"prompt_token_ids":[n,...]`` (no whitespace), or
    nulls, in one pass (a read of many events costs less than the scan event by event; the
    first read of a stream holds the prompt's ids and often most of the answer); None for
    anything else."""
    if prompt and b'"prompt_token_ids":[' in data:
        data = _COMPACT_PROMPT_IDS.sub(b'"prompt_token_ids":null', data)
    out = _COMPACT_IDS.sub(b'"token_ids":null', data)
    # every field is now null (a list just set to null, or a null already: the first event's
    # prompt ids included); anything else (whitespace, nesting, a value's text ending in the
    # name) takes the careful scan.  One search of what is left costs less than counting both.
    if _NOT_NULL.search(out) is not None:
        return None
    return out


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

