"""Config hot reload: a new routing snapshot from the file, swapped in atomically.

Requests in flight keep the snapshot they started with; observations (health, latency,
ejections, breakers, load) survive for endpoints that remain.  Settings fixed at start-up
(listen address, GeoIP database, probe intervals, retry budget) need a restart: a reload that
changes them says so."""
from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from gateway.snapshot import make_snapshot
from gateway.config import Config, load_config
from gateway.state import OBSERVATIONS, RUNTIME, SNAPSHOT

log = logging.getLogger("infercdn.reload")

CONFIG_PATH = web.AppKey("config_path", Path)
SIMULATED = web.AppKey("simulated", dict)

_FIXED = ("gateway.host", "gateway.port", "geoip", "health", "load", "budget", "timeouts")


def restart_needed(old: Config, new: Config) -> list[str]:
    out = []
    for name in _FIXED:
        head, _, attr = name.partition(".")
        a, b = getattr(old, head), getattr(new, head)
        if attr:
            a, b = getattr(a, attr), getattr(b, attr)
        if a != b:
            out.append(name)
    return out


def reload_config(app: web.Application) -> dict[str, object]:
    """Load the app's config file again and swap the routing snapshot.  Raises ConfigError
    (and changes nothing) when the file is invalid."""
    path = app[CONFIG_PATH]
    holder = app[SNAPSHOT]
    old = holder.current
    cfg = load_config(path)
    snapshot = make_snapshot(cfg, app[OBSERVATIONS], app[RUNTIME].rng, app.get(SIMULATED), old)
    holder.swap(snapshot)
    fixed = restart_needed(old.config, cfg)
    if fixed:
        log.warning("config reloaded from %s; changes to %s take effect after a restart", path, ", ".join(fixed))
    else:
        log.info("config reloaded from %s", path)
    return {"file": str(path), "pools": len(cfg.pools), "endpoints": len(snapshot.topology.endpoints),
            "restart_needed_for": fixed}
