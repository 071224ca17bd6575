"""Run a gateway (and, for local runs, the simulated pools of its config) until a signal."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config, PoolCfg
from routing.geo import geo_ms
from routing.topology import Location

log = logging.getLogger("infercdn")


def sim_rtt_ms(cfg: Config, pool: PoolCfg) -> float:
    """The simulated network round trip of a pool: its distance from the gateway, priced
    like the routing prior, so measured latency and the geo prior agree in the demo."""
    sim = pool.simulate
    assert sim is not None
    if sim.rtt_ms != "auto":
        return float(sim.rtt_ms)
    region = next(r for r in cfg.regions if r.name == pool.region)
    g = cfg.gateway.location
    return geo_ms(Location(g.lat, g.lon), Location(region.location.lat, region.location.lon), cfg.routing.params())


@dataclass(slots=True)
class LocalFleet:
    """In-process simulators standing in for the pools that have a ``simulate`` block."""

    urls: dict[str, list[str]] = field(default_factory=dict)
    sims: list[object] = field(default_factory=list)

    async def start(self, cfg: Config) -> None:
        from worker.sim import SimConfig, Simulator

        for pool in cfg.pools:
            if pool.simulate is None:
                continue
            s = pool.simulate
            model = next(iter(pool.models.values()))
            for _ in range(s.endpoints):
                sim = Simulator(SimConfig(model=model, ttft_ms=s.ttft_ms, itl_ms=s.itl_ms,
                                          rtt_ms=sim_rtt_ms(cfg, pool), max_num_seqs=s.max_num_seqs))
                self.urls.setdefault(pool.name, []).append(await sim.start(host="127.0.0.1", port=0))
                self.sims.append(sim)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sims), return_exceptions=True)


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` with handler cancellation on (a client that leaves cancels its handler,
    which closes the upstream request at once)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    return runner, sockets[0].getsockname()[1] if sockets else port


@contextlib.asynccontextmanager
async def running_gateway(cfg: Config, host: str, port: int, **kwargs: object) -> AsyncIterator[tuple[LocalFleet, int]]:
    fleet = LocalFleet()
    await fleet.start(cfg)
    runner = None
    try:
        app = build_app(cfg, simulated=fleet.urls, **kwargs)  # type: ignore[arg-type]
        runner, bound = await start_site(app, host, port)
        yield fleet, bound
    finally:
        if runner is not None:
            await runner.cleanup()
        await fleet.stop()


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run(main: Callable[[], Awaitable[int]]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(main())
    return uvloop.run(main())
