"""Relay an upstream SSE body to the client: bytes pass through unchanged, chunk by chunk.

Only the last few chunks are kept, to tell a complete stream (``data: [DONE]``) from a cut
one and to read the final usage block; nothing on the hot path is parsed or re-encoded."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

DONE = b"data: [DONE]"


@dataclass(slots=True)
class StreamTail:
    """The last chunks of a relayed stream (enough for [DONE] and the usage event)."""

    chunks: list[bytes] = field(default_factory=list)
    bytes_relayed: int = 0
    keep: int = 4

    def push(self, chunk: bytes) -> None:
        self.bytes_relayed += len(chunk)
        self.chunks.append(chunk)
        if len(self.chunks) > self.keep:
            del self.chunks[0]

    def joined(self) -> bytes:
        return b"".join(self.chunks)

    def complete(self) -> bool:
        return DONE in self.joined()

    def usage(self) -> dict[str, Any] | None:
        return find_usage(self.joined())


def find_usage(data: bytes) -> dict[str, Any] | None:
    """The usage of the last SSE event (or JSON body) in ``data`` that carries one."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    start = data.rfind(b"data: ", 0, at)
    body = data[start + 6:] if start >= 0 else data
    end = body.find(b"\n\n")
    if end >= 0:
        body = body[:end]
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


async def pump(response: web.StreamResponse, first: bytes, chunks: AsyncIterator[bytes], tail: StreamTail) -> None:
    """Write ``first`` and then every upstream chunk as it arrives.  Upstream errors and
    client disconnects propagate to the caller, which decides what the client sees."""
    tail.push(first)
    await response.write(first)
    async for chunk in chunks:
        tail.push(chunk)
        await response.write(chunk)
