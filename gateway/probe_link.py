"""A serving process's line to its supervisor under ``infercdn gateway --workers N``.

One unix stream socket per worker, newline-delimited JSON both ways.  The worker says ``hello``
(its index), ``ready`` once it listens, ``reload`` after POST /admin/reload reloaded it (the
supervisor then reloads the others), and — worker 0 only, the host's prober — each round of
health probes (``probes``) and load scrapes (``loads``).  The supervisor relays those rounds to
every other worker, which applies them to its own observation store (``background.apply_*``);
it sends a worker that (re)connects the last round of each kind at once.  The supervisor going
away (its socket closes) stops the worker: no orphaned gateway keeps serving."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.background import apply_loads, apply_probes, running

log = logging.getLogger("infercdn.workers")

MAX_LINE = 16 * 1024 * 1024  # a probe round of many thousands of endpoints still fits


def encode(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"kind": kind, **fields}) + b"\n"


@dataclass(slots=True)
class ProbeLink:
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def prober(self) -> bool:
        return self.index == 0

    @classmethod
    async def connect(cls, path: str, index: int) -> ProbeLink:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        link = cls(index, reader, writer)
        link._send(encode("hello", index=index))
        return link

    def _send(self, line: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(line)

    def publish(self, kind: str, rows: list[Any]) -> None:
        self._send(encode(kind, rows=rows))

    def ready(self) -> None:
        self._send(encode("ready", index=self.index))

    def reload_peers(self) -> None:
        self._send(encode("reload", index=self.index))

    async def _read(self, app: web.Application) -> None:
        try:
            while line := await self.reader.readline():
                msg = orjson.loads(line)
                if msg["kind"] == "probes":
                    apply_probes(app, [tuple(r) for r in msg["rows"]])
                elif msg["kind"] == "loads":
                    apply_loads(app, [tuple(r) for r in msg["rows"]])
        except (OSError, ValueError, KeyError) as exc:
            log.error("link to the supervisor failed: %s", exc)
        finally:
            self.lost.set()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: apply what the supervisor relays while the app runs."""
        async with running(self._read(app)):
            yield
        self.writer.close()
