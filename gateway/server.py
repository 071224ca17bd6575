"""Run a gateway (and, for local runs, the simulated pools of its config) until a signal."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
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
    """Simulators standing in for the pools that have a ``simulate`` block: in this process
    (tests), or one process each (``infercdn up``: kill one to see failover)."""

    processes: bool = False
    urls: dict[str, list[str]] = field(default_factory=dict)
    pids: dict[str, list[int]] = field(default_factory=dict)
    sims: list[object] = field(default_factory=list)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self, cfg: Config) -> None:
        for pool in cfg.pools:
            if pool.simulate is None:
                continue
            for _ in range(pool.simulate.endpoints):
                url = await (self._spawn(cfg, pool) if self.processes else self._inprocess(cfg, pool))
                self.urls.setdefault(pool.name, []).append(url)

    async def _inprocess(self, cfg: Config, pool: PoolCfg) -> str:
        from worker.sim import SimConfig, Simulator

        s = pool.simulate
        assert s is not None
        sim = Simulator(SimConfig(model=next(iter(pool.models.values())), ttft_ms=s.ttft_ms, itl_ms=s.itl_ms,
                                  rtt_ms=sim_rtt_ms(cfg, pool), max_num_seqs=s.max_num_seqs))
        self.sims.append(sim)
        return await sim.start(host="127.0.0.1", port=0)

    async def _spawn(self, cfg: Config, pool: PoolCfg) -> str:
        s = pool.simulate
        assert s is not None
        args = ["-m", "gateway.cli", "worker", "sim", "--host", "127.0.0.1", "--port", "0",
                "--model", next(iter(pool.models.values())), "--ttft-ms", str(s.ttft_ms), "--itl-ms", str(s.itl_ms),
                "--rtt-ms", str(sim_rtt_ms(cfg, pool)), "--max-num-seqs", str(s.max_num_seqs)]
        proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=asyncio.subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"simulator for pool {pool.name} failed to start (exit {proc.returncode})")
        self.pids.setdefault(pool.name, []).append(proc.pid)
        return line

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sims), return_exceptions=True)
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()


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
async def running_gateway(cfg: Config, host: str, port: int, *, sim_processes: bool = False,
                          **kwargs: object) -> AsyncIterator[tuple[LocalFleet, int]]:
    fleet = LocalFleet(processes=sim_processes)
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
