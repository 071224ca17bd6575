"""Endpoint discovery: what the sources beside the config file found, and the one way it reaches
routing.

Sources: DNS (``pools[].endpoints[].dns_refresh_s``: every address of the host becomes an
endpoint) and the registry of self-registered workers (``gateway/registry.py``).  Each source
writes what it found into :class:`Discovered` and calls :func:`refresh`, which rebuilds the
routing snapshot from the running config plus everything discovered and swaps it in, exactly as
a reload does: requests in flight keep their snapshot, observations stay for endpoints that
remain.  A reload rebuilds from the new config plus the same discoveries.

Under ``--workers N`` only the host's prober (worker 0) resolves; it sends every change of the
addresses to the other workers over the host link (``dns``), so all of them expand an endpoint
into the same addresses, under the same ids."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from gateway.background import every
from gateway.config import Config
from gateway.snapshot import make_snapshot
from gateway.state import DISCOVERED, HOST_LINK, METRICS, OBSERVATIONS, RUNTIME, SIMULATED, SNAPSHOT
from routing.topology import Endpoint, Topology

log = logging.getLogger("infercdn.discovery")

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]  # (host, port) -> addresses


@dataclass
class Discovered:
    """What the discovery sources found; read by ``build_topology``."""

    dns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # static endpoint id -> addresses
    registered: tuple[bytes, ...] = ()  # raw announcements, verified at each build (gateway.fleet)
    registered_at: float = 0.0  # wall clock of that read: leases are judged against it
    # called with the new snapshot's topology before it is swapped in (the canary holds new endpoints)
    on_new_topology: list[Callable[[Topology], None]] = field(default_factory=list)

    def expand(self, ep: Endpoint, refresh: bool) -> list[Endpoint]:
        """A static endpoint as routed: itself, or one endpoint per resolved address."""
        addrs = self.dns.get(ep.id) if refresh else None
        if not addrs:
            return [ep]
        return [replace(ep, id=f"{ep.id}@{a}", url=with_host(ep.url, a, ep.url),
                        health_url=with_host(ep.health_url, a, ep.url) if ep.health_url else None)
                for a in addrs]


def with_host(url: str, address: str, reference: str) -> str:
    """``url`` with its host replaced by ``address`` when it names the same host as
    ``reference`` (an endpoint's health_url on another host is left alone)."""
    parts = urlsplit(url)
    if parts.hostname != urlsplit(reference).hostname:
        return url
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def refresh(app: web.Application, why: str) -> None:
    """Rebuild the routing snapshot from the running config and the discoveries; swap it in."""

    holder = app[SNAPSHOT]
    old = holder.current
    new = make_snapshot(old.config, app[OBSERVATIONS], app[RUNTIME], app.get(SIMULATED), old,
                        app[DISCOVERED])
    holder.swap(new)
    log.info("topology refreshed (%s): %d pools, %d endpoints", why, len(new.topology.pools),
             len(new.topology.endpoints))


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address of ``host`` (the event loop's getaddrinfo), sorted, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def dns_targets(cfg: Config) -> list[tuple[str, str, int, float]]:
    """(endpoint id, host, port, refresh s) of every endpoint to re-resolve (not IP literals)."""
    out = []
    for pool in cfg.pools:
        for j, e in enumerate(pool.endpoints):
            if e.dns_refresh_s is None:
                continue
            parts = urlsplit(e.url)
            host = parts.hostname or ""
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(host)
                continue
            port = parts.port or (443 if parts.scheme == "https" else 80)
            out.append((e.id or f"{pool.name}-{j}", host, port, e.dns_refresh_s))
    return out


async def resolve_round(app: web.Application, resolver: Resolver, due: dict[str, float],
                        on_error: Callable[[], None]) -> None:
    """Resolve the endpoints that are due; refresh the topology when an address set changed.
    A failure (or an empty answer) keeps the addresses last seen."""
    found = app[DISCOVERED]
    now = app[RUNTIME].clock()
    targets = [t for t in dns_targets(app[SNAPSHOT].current.config) if due.get(t[0], 0.0) <= now]
    changed = []
    for eid, host, port, refresh_s in targets:
        due[eid] = now + refresh_s
        try:
            async with asyncio.timeout(max(1.0, refresh_s)):
                addrs = tuple(sorted(set(await resolver(host, port))))
        except (OSError, asyncio.TimeoutError) as exc:
            on_error()
            log.warning("DNS: cannot resolve %s for endpoint %s (%s); keeping %s", host, eid, exc,
                        list(found.dns.get(eid, ())) or "the host name")
            continue
        if addrs and addrs != found.dns.get(eid):
            log.info("DNS: endpoint %s (%s) now at %s", eid, host, list(addrs))
            found.dns[eid] = addrs
            changed.append(eid)
    if changed:
        refresh(app, f"DNS of {', '.join(changed)}")
        link = app.get(HOST_LINK)
        if link is not None:  # --workers: the other workers route on the same addresses, same ids
            link.publish("dns", found={eid: list(addrs) for eid, addrs in found.dns.items()})


def follow_dns(app: web.Application, msg: dict[str, Any]) -> None:
    """The host prober's resolutions (or the last, replayed to a worker that starts): taken
    whole; the topology rebuilt when they changed."""
    found = app[DISCOVERED]
    dns = {str(eid): tuple(str(a) for a in addrs) for eid, addrs in msg["found"].items()}
    if dns != found.dns:
        found.dns = dns
        refresh(app, "DNS, from the host's prober")


def dns_watcher(resolver: Resolver | None = None, tick_s: float = 0.5
                ) -> Callable[[web.Application], AsyncIterator[None]]:
    """The DNS source as a cleanup context; ``resolver`` defaults to the system's."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        link = app.get(HOST_LINK)
        if link is not None:  # --workers: the prober resolves for the host, every worker follows
            link.on("dns", lambda msg: follow_dns(app, msg))
            if not link.prober:
                yield
                return
        targets = dns_targets(app[SNAPSHOT].current.config)  # a reload may add some: always watch
        res = resolver or system_resolver
        due: dict[str, float] = {}
        errors = app[METRICS].discovery_errors.labels("dns")
        tick = min([tick_s, *(t[3] for t in targets)])
        async with every(tick, lambda: resolve_round(app, res, due, errors.inc), "DNS", clock=app[RUNTIME].clock):
            yield
    return ctx
