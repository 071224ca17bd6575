"""Config hot reload (POST /admin/reload or SIGHUP): a new routing snapshot from the file,
swapped in atomically.

Requests in flight keep the snapshot they started with; observations (health, latency,
ejections, breakers, load) survive for endpoints that remain and take the new outlier, breaker,
latency and health settings.  Settings fixed at start-up (``gateway.reload_fields.RESTART``:
listen address, GeoIP database, probe intervals, ...) need a restart: a reload that changes
them names them, as it names the pools whose local stand-ins (``simulate``/``launch``) start
only with the gateway.  An invalid file changes nothing."""
from __future__ import annotations

import logging

from aiohttp import web

from gateway.snapshot import make_snapshot
from gateway.config import ConfigError, load_config
from gateway.reload_fields import restart_needed
from gateway.state import (ACCESS_LOG, CONFIG_PATH, CONFIG_TRANSFORM, DISCOVERED, OBSERVATIONS, PROXY, RELOAD_PEERS, RUNTIME,
                           SIMULATED, SNAPSHOT)

log = logging.getLogger("infercdn.reload")


def reload_config(app: web.Application, *, peers: bool = True) -> dict[str, object]:
    """Load the app's config file again and swap the routing snapshot.  Raises ConfigError
    (and changes nothing) when the file is invalid.  ``peers``: under --workers, the other
    serving processes of the host reload too (a signal to one process already reaches all)."""
    path = app[CONFIG_PATH]
    holder = app[SNAPSHOT]
    old = holder.current
    cfg = load_config(path)
    transform = app.get(CONFIG_TRANSFORM)
    if transform is not None:
        cfg = transform(cfg)
    snapshot = make_snapshot(cfg, app[OBSERVATIONS], app[RUNTIME], app.get(SIMULATED), old,
                             app.get(DISCOVERED))
    holder.swap(snapshot)
    proxy = app.get(PROXY)
    if proxy is not None:  # the retry budget's window is fixed at start (reload_fields.RESTART)
        proxy.budget.ratio, proxy.budget.min_per_s = cfg.budget.ratio, cfg.budget.min_per_s
    access = app.get(ACCESS_LOG)
    if access is not None:
        access.reopen()  # logrotate: move the file, then reload
    notify = app.get(RELOAD_PEERS)
    if peers and notify is not None:
        notify()
    fixed = restart_needed(old.config, cfg)
    served = {p.name for p in snapshot.topology.pools if p.endpoints}
    idle = [p.name for p in cfg.pools if (p.simulate is not None or p.launch is not None) and p.name not in served]
    later = ([f"changes to {', '.join(fixed)}"] if fixed else []) + \
        ([f"local endpoints for {', '.join(idle)}"] if idle else [])
    if later:
        log.warning("config reloaded from %s; take effect after a restart: %s", path, "; ".join(later))
    else:
        log.info("config reloaded from %s", path)
    return {"file": str(path), "pools": len(cfg.pools), "endpoints": len(snapshot.topology.endpoints),
            "restart_needed_for": fixed, "not_started": idle}


def reload_on_signal(app: web.Application) -> None:
    """SIGHUP: reload as POST /admin/reload does; an invalid file is logged (file, field, reason)
    and the running config kept."""
    try:
        reload_config(app, peers=False)
    except ConfigError as exc:
        log.error("config reload refused, the running config is kept:\n%s", exc)
