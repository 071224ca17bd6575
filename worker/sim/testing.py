"""Helpers for tests that drive a simulator (this package's tests and the gateway's)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from worker.sim.config import SimConfig
from worker.sim.server import Simulator


@asynccontextmanager
async def running_sim(**config: Any) -> AsyncIterator[Simulator]:
    """``async with running_sim(ttft_ms=0) as sim: ...`` — started on 127.0.0.1:0, stopped after."""
    sim = Simulator(SimConfig(**config))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def parse_sse(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Split an SSE body into its JSON events and whether it ended with ``data: [DONE]``;
    raises ValueError on an event that is not ``data: <json>``."""
    events: list[dict[str, Any]] = []
    done = False
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        if not block.startswith(b"data: ") or done:
            raise ValueError(f"unexpected SSE block {block[:80]!r}")
        data = block[len(b"data: "):]
        if data == b"[DONE]":
            done = True
        else:
            events.append(orjson.loads(data))
    return events, done


def stream_text(events: list[dict[str, Any]]) -> str:
    """The generated text of a chat or completion stream."""
    out = []
    for event in events:
        for choice in event.get("choices", []):
            out.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
    return "".join(out)


def stream_token_ids(events: list[dict[str, Any]]) -> list[int]:
    return [t for e in events for c in e.get("choices", []) for t in c.get("token_ids") or []]


def choice_texts(events: list[dict[str, Any]]) -> dict[int, str]:
    """Each choice's text in a multi-choice stream (``n > 1`` or a list of prompts), by index."""
    out: dict[int, str] = {}
    for event in events:
        for choice in event.get("choices", []):
            piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            out[choice["index"]] = out.get(choice["index"], "") + piece
    return out


def choice_token_ids(events: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Each choice's generated token ids in a stream asked with ``return_token_ids``, by index."""
    out: dict[int, list[int]] = {}
    for event in events:
        for choice in event.get("choices", []):
            out.setdefault(choice["index"], []).extend(choice.get("token_ids") or [])
    return out


def parse_typed_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A Responses API stream: ``(event name, JSON data)`` per ``event: NAME\\ndata: {...}``
    block; raises ValueError on any other block (it has no ``data: [DONE]``)."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        head, _, data = block.partition(b"\n")
        if not head.startswith(b"event: ") or not data.startswith(b"data: "):
            raise ValueError(f"unexpected SSE block {block[:80]!r}")
        out.append((head[len(b"event: "):].decode(), orjson.loads(data[len(b"data: "):])))
    return out


async def read_stalled(resp: aiohttp.ClientResponse, events: int, quiet: float = 0.2) -> list[bytes]:
    """The ``events`` SSE events a stalled stream sent (``stall_after``), read line by line (5 s
    at most per line); raises AssertionError if anything more arrives within ``quiet`` seconds."""
    lines = [await asyncio.wait_for(resp.content.readline(), 5) for _ in range(2 * events)]
    try:
        extra = await asyncio.wait_for(resp.content.readline(), quiet)
    except asyncio.TimeoutError:
        return [line for line in lines if line.startswith(b"data: ")]
    raise AssertionError(f"the stream was not stalled: {extra[:80]!r}")
