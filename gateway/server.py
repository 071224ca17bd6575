"""Serve a gateway app until a signal: the listener (start_site), the drain, SIGHUP and the
signals that stop it.  Running the pools of a local config beside it (simulators, launched
vLLM) is the composition root's job (``infercdn/local.py``), outside this package."""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import Config, EndpointCfg, LaunchCfg
from gateway.edge import EdgeLimits, EdgeRunner
from gateway.state import DRAINING, RUNTIME, SNAPSHOT

log = logging.getLogger("infercdn")


def with_endpoints(cfg: Config, extra: dict[str, list[EndpointCfg]]) -> Config:
    """``cfg`` with ``extra`` endpoints appended to the pools they name."""
    if not extra:
        return cfg
    pools = tuple(p.model_copy(update={"endpoints": (*p.endpoints, *extra[p.name])}) if extra.get(p.name) else p
                  for p in cfg.pools)
    return cfg.model_copy(update={"pools": pools})


def vllm_default(cfg: Config) -> Config:
    """The embedded default with the gateway region's simulated pool launched on real vLLM
    instead (``infercdn up --engine vllm``; ``configs/local-vllm.yaml`` spells out the same config)."""
    pools = tuple(
        p.model_copy(update={"name": f"{p.region}-vllm", "simulate": None, "launch": LaunchCfg()})
        if p.region == cfg.gateway.region and p.simulate is not None else p
        for p in cfg.pools)
    return cfg.model_copy(update={"pools": pools})


async def start_site(app: web.Application, host: str, port: int,
                     shutdown_timeout: float = 5.0, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Start ``app`` with handler cancellation on (a client that leaves cancels its handler,
    which closes the upstream request at once); at cleanup, requests in flight get
    ``shutdown_timeout`` seconds to finish.  ``reuse_port``: one of several processes
    listening on the same port (--workers), the kernel spreading connections between them."""
    # the client side's bounds (gateway/edge.py); defaults for an app that is not a gateway (a stand-in)
    edge = (EdgeLimits.of(app[SNAPSHOT].current.config.gateway, app[RUNTIME].clock) if SNAPSHOT in app
            else EdgeLimits(asyncio.get_running_loop().time))
    runner = EdgeRunner(app, edge, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    return runner, sockets[0].getsockname()[1] if sockets else port


async def drain(app: web.Application, runner: web.AppRunner, cfg: Config, notice: bool) -> None:
    """Stop without cutting anyone off: /readyz says "draining" (for ``drain_notice_s`` while new
    requests are still served, on a normal stop), then the listener closes and requests in flight
    get up to ``drain_timeout_s``; the upstream side closes only after them."""
    g = cfg.gateway
    clock = app[RUNTIME].clock
    app[DRAINING].since = clock()
    if notice and g.drain_notice_s > 0:
        log.info("draining: /readyz answers 503; still serving for %g s", g.drain_notice_s)
        await asyncio.sleep(g.drain_notice_s)
    log.info("draining: listener closed; waiting up to %g s for requests in flight", g.drain_timeout_s)
    await runner.cleanup()
    log.info("stopped, %.1f s after the stop began", clock() - app[DRAINING].since)


def on_sighup(callback: Callable[[], None]) -> bool:
    """Reload on SIGHUP where this loop can own signals (the main thread)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, callback)
    except (ValueError, RuntimeError, NotImplementedError):
        return False
    return True


async def wait_for_signal() -> None:
    """Until SIGINT or SIGTERM; the handlers go then, so a second one stops the process at once
    (during the drain that follows the first)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(main: Callable[[], Awaitable[int]]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(main())
    return uvloop.run(main())

