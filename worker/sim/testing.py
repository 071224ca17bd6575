"""Helpers for tests that drive a simulator (this package's tests and the gateway's)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
