"""A serving process's line to its supervisor under ``infercdn gateway --workers N``.

One unix stream socket per worker, newline-delimited JSON objects with a ``kind`` both ways.
Control kinds, from the worker: ``hello`` (its index), ``ready`` once it listens, ``reload`` after
POST /admin/reload reloaded it (the supervisor then reloads the others).  Every other kind is
state shared by the host's workers: the supervisor relays it to every other worker and replays
the latest message of each kind to a worker that (re)connects, so a message should carry the
whole state of its kind.  Worker 0, the host's prober, sends ``probes`` (each round of health
probes) and ``loads`` (of load scrapes); the others apply them to their own observation store.
A feature that needs the same across workers (e.g. operator drains) registers a handler with
``on(kind, ...)`` and sends with ``publish(kind, ...)``.  The supervisor going away (its socket
closes) stops the worker: no orphaned gateway keeps serving.  After the replay the supervisor
sends ``replayed`` (control, to the worker): ``HostLink.replayed`` is set once the worker applied
everything it missed, and a worker listens only then."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("infercdn.workers")

MAX_LINE = 16 * 1024 * 1024  # a probe round of many thousands of endpoints still fits
CONTROL = frozenset({"hello", "ready", "reload", "replayed"})
Handler = Callable[[dict[str, Any]], None]


def encode(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"kind": kind, **fields}) + b"\n"


@dataclass(slots=True)
class HostLink:
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    replayed: asyncio.Event = field(default_factory=asyncio.Event)  # the replay after hello was applied
    handlers: dict[str, Handler] = field(default_factory=dict)

    @property
    def prober(self) -> bool:
        """Worker 0 probes and scrapes for the host."""
        return self.index == 0

    @classmethod
    async def connect(cls, path: str, index: int) -> HostLink:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        link = cls(index, reader, writer)
        link._send(encode("hello", index=index))
        return link

    def _send(self, line: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(line)

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(message)`` for each ``kind`` message another worker publishes."""
        if kind in CONTROL:
            raise ValueError(f"{kind!r} is a control message of the link")
        self.handlers[kind] = handler

    def publish(self, kind: str, **fields: Any) -> None:
        """Share ``fields`` with the host's other workers (and any worker started later)."""
        if kind in CONTROL:
            raise ValueError(f"{kind!r} is a control message of the link")
        self._send(encode(kind, **fields))

    def ready(self) -> None:
        self._send(encode("ready", index=self.index))

    def reload_peers(self) -> None:
        self._send(encode("reload", index=self.index))

    async def _read(self) -> None:
        try:
            while line := await self.reader.readline():
                msg = orjson.loads(line)
                if msg["kind"] == "replayed":
                    self.replayed.set()
                    continue
                handler = self.handlers.get(msg["kind"])
                if handler is not None:
                    handler(msg)
        except (OSError, ValueError, KeyError) as exc:
            log.error("link to the supervisor failed: %s", exc)
        finally:
            self.lost.set()
            self.replayed.set()  # nothing more will come: nobody waits for it

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: apply what the supervisor relays while the app runs."""
        from gateway.background import running

        async with running(self._read()):
            yield
        self.writer.close()
