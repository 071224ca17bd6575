"""A gateway with the local fleet of its config, in one process (``running_gateway``) or as
``--workers N`` serving processes (``running_workers``): what ``infercdn up`` and ``infercdn
gateway`` run.  The composition root: it wires ``gateway`` to the stand-ins of ``worker``."""
from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway import workers
from gateway.app import build_app
from gateway.config import Config
from gateway.reload import reload_on_signal
from gateway.server import drain, on_sighup, start_site
from gateway.state import CONFIG_PATH
from gateway.watch import config_watch
from infercdn.fleet import LocalFleet


@contextlib.asynccontextmanager
async def running_gateway(cfg: Config, host: str, port: int, *, sim_processes: bool = False,
                          engine: str = "sim", model_dir: str | None = None,
                          prepare: Callable[[Config], Config] | None = None,
                          **kwargs: Any) -> AsyncIterator[tuple[LocalFleet, int]]:
    """The gateway with its local fleet.  ``cfg`` has been through ``prepare`` already; a reload
    (POST /admin/reload, SIGHUP; with ``config_path``) passes the file through ``prepare`` and
    adds the fleet's endpoints the same way."""
    fleet = LocalFleet(processes=sim_processes, engine=engine, model_dir=model_dir)
    runner = app = None
    hup = False
    stopping = False
    try:
        await fleet.start(cfg)

        def transform(new: Config) -> Config:
            return fleet.config(prepare(new) if prepare is not None else new)

        app = build_app(fleet.config(cfg), simulated=fleet.urls, config_transform=transform, **kwargs)
        app.cleanup_ctx.append(config_watch)
        runner, bound = await start_site(app, host, port, shutdown_timeout=cfg.gateway.drain_timeout_s)
        if CONFIG_PATH in app:
            hup = on_sighup(lambda: reload_on_signal(app))
        yield fleet, bound
        stopping = True
    finally:
        if hup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if runner is not None and app is not None:
            await drain(app, runner, cfg, notice=stopping)
        await fleet.stop()


@contextlib.asynccontextmanager
async def running_workers(cfg: Config, config_path: str | Path, host: str, port: int, count: int, *,
                          sim_processes: bool = False, engine: str = "sim", model_dir: str | None = None,
                          prepare: str | None = None) -> AsyncIterator[tuple[LocalFleet, int, workers.Supervisor]]:
    """The local fleet of ``cfg`` (run once, here) and ``count`` serving processes on one port
    (``gateway/workers.py``)."""
    fleet = LocalFleet(processes=sim_processes, engine=engine, model_dir=model_dir)
    async with workers.running_workers(cfg, config_path, host, port, count, fleet, prepare=prepare,
                                       entry="infercdn.gateway_worker") as (bound, supervisor):
        yield fleet, bound, supervisor
