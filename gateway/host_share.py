"""What the workers of one host (``infercdn gateway --workers N``) keep the same over their
link (``gateway/host_link.py``): the operator's drains, and the live traffic and requests in
flight that the fleet page and ``GET /admin/topology`` show.

Drains (kind ``drains``): a drain or undrain POST may reach any worker.  Each worker keeps a
book of every drain decision, one entry per endpoint or pool, stamped with a Lamport version
and the index of the worker that took it; after each change it publishes its whole book, and a
worker merges a book it receives entry by entry, the higher (version, worker) winning.  So two
operators who drain different endpoints on two workers at the same moment both get their drain,
the same endpoint drained and undrained at once ends the same way everywhere, and a worker that
(re)starts gets the whole book from the link's replay.  An entry names an endpoint or pool this
worker does not route yet (a registered endpoint it has not heard of): it applies once it
appears.  An entry whose endpoint or pool leaves the topology is dropped, as a single gateway
drops the drain of an endpoint that leaves its config.

Traffic (kinds ``traffic.<worker>``): every ``TRAFFIC_SHARE_S`` each worker that has anything
to tell publishes its last minute of per-region one-second buckets and its requests in flight
per endpoint; the others add them to their own.  Bucket seconds are the monotonic clock's,
which is the same for every process of a host."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.background import every
from gateway.host_link import HostLink
from gateway.state import DISCOVERED, DRAIN_BOOK, HOST_LINK, OBSERVATIONS, PEER_TRAFFIC, RUNTIME, SNAPSHOT, TRAFFIC
from routing.observations import Observations
from routing.topology import Topology

log = logging.getLogger("infercdn.workers")

TRAFFIC_SHARE_S = 1.0
Key = tuple[str, str]  # ("endpoint", id) or ("pool", name)
Entry = tuple[bool, int, int]  # drained, version, writer (worker index)


def _keys(topology: Topology) -> set[Key]:
    return {("pool", p.name) for p in topology.pools} | {("endpoint", e) for e in topology.endpoints}


@dataclass
class DrainBook:
    """The host's drain decisions, merged over its workers (see the module's doc)."""

    me: int
    obs: Observations
    clock: int = 0  # the Lamport clock: above every version seen
    entries: dict[Key, Entry] = field(default_factory=dict)
    known: set[Key] = field(default_factory=set)  # keys of the topology routed now

    def note(self, kind: str, name: str, drained: bool) -> None:
        """This worker's operator drained (or undrained) ``kind`` ``name`` (already applied)."""
        self.clock += 1
        self.entries[(kind, name)] = (drained, self.clock, self.me)

    def merge(self, rows: list[list[Any]]) -> None:
        """Another worker's book: each newer entry taken and applied."""
        for kind, name, drained, version, writer in rows:
            key, entry = (str(kind), str(name)), (bool(drained), int(version), int(writer))
            self.clock = max(self.clock, entry[1])
            old = self.entries.get(key)
            if old is None or entry[1:] > old[1:]:
                self.entries[key] = entry
                self._apply(key, entry[0])

    def rows(self) -> list[list[Any]]:
        return [[k, n, d, v, w] for (k, n), (d, v, w) in sorted(self.entries.items())]

    def on_topology(self, topology: Topology) -> None:
        """A new topology (after the observations synced to it): drop what left, apply what came."""
        keys = _keys(topology)
        for key in self.known - keys:
            self.entries.pop(key, None)
        for key in keys & self.entries.keys():
            self._apply(key, self.entries[key][0])
        self.known = keys

    def _apply(self, key: Key, drained: bool) -> None:
        kind, name = key
        if kind == "pool":
            self.obs.drain_pool(name, drained)
        else:
            self.obs.drain(name, drained)


def share_drain(app: web.Application, kind: str, name: str, drained: bool) -> None:
    """After an admin drain/undrain here: every worker of the host applies it (no-op alone)."""
    book, link = app.get(DRAIN_BOOK), app.get(HOST_LINK)
    if book is None or link is None:
        return
    book.note(kind, name, drained)
    link.publish("drains", rows=book.rows())


async def shared_drains(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (workers only, before the link reads): the drain book and its handler."""
    link = app[HOST_LINK]
    book = app[DRAIN_BOOK] = DrainBook(link.index, app[OBSERVATIONS])
    book.known = _keys(app[SNAPSHOT].current.topology)
    app[DISCOVERED].on_new_topology.append(book.on_topology)
    link.on("drains", lambda msg: book.merge(msg["rows"]))
    yield


@dataclass
class PeerTraffic:
    """The other workers' latest traffic windows and requests in flight, by worker."""

    windows: dict[int, dict[str, list[list[int]]]] = field(default_factory=dict)  # worker -> region -> buckets
    inflight: dict[int, dict[str, int]] = field(default_factory=dict)  # worker -> endpoint -> in flight

    def receive(self, msg: Mapping[str, Any]) -> None:
        worker = int(msg["worker"])
        self.windows[worker] = {str(r): [list(map(int, b)) for b in bs] for r, bs in msg["regions"].items()}
        self.inflight[worker] = {str(e): int(n) for e, n in msg["inflight"].items()}

    def inflight_of(self, endpoint_id: str) -> int:
        return sum(per.get(endpoint_id, 0) for per in self.inflight.values())


def peer_inflight(app: web.Application) -> Mapping[str, int] | None:
    """Requests in flight on the host's other workers by endpoint (None alone)."""
    peers = app.get(PEER_TRAFFIC)
    if peers is None:
        return None
    out: dict[str, int] = {}
    for per in peers.inflight.values():
        for eid, n in per.items():
            out[eid] = out.get(eid, 0) + n
    return out


def shared_traffic(workers: int, interval_s: float = TRAFFIC_SHARE_S
                   ) -> Callable[[web.Application], AsyncIterator[None]]:
    """Cleanup context (workers only): publish this worker's traffic, keep the others'."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        link: HostLink = app[HOST_LINK]
        peers = app[PEER_TRAFFIC] = PeerTraffic()
        traffic, obs = app[TRAFFIC], app[OBSERVATIONS]
        traffic.peers = peers.windows
        for i in range(workers):
            if i != link.index:
                link.on(f"traffic.{i}", peers.receive)
        told = [True]  # the last message said something: one more, empty, says it is over (a
        # restarted worker's first message replaces the in-flight its dead predecessor left)

        async def tell() -> None:
            regions = traffic.window()
            inflight = {eid: n for eid in obs.endpoint_ids() if (n := obs.view(eid).inflight)}
            if regions or inflight or told[0]:
                link.publish(f"traffic.{link.index}", worker=link.index, regions=regions, inflight=inflight)
            told[0] = bool(regions or inflight)

        async with every(interval_s, tell, "traffic share", clock=app[RUNTIME].clock):
            yield
    return ctx
