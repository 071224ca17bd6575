"""``infercdn gateway --workers N``: N serving processes on one port, supervised by this one.

- **One port.**  The supervisor binds the port first (``SO_REUSEPORT``, not listening: it takes no
  connections) so port 0 picks one free port for all; each worker listens on it with
  ``SO_REUSEPORT`` and the kernel spreads new connections over the workers.
- **Supervised.**  A worker that dies is restarted (0.5 s, doubling up to 30 s for one that keeps
  dying young; back to 0.5 s once it lived 30 s).  SIGTERM/SIGINT: every worker drains as a
  single gateway does (``drain_notice_s``, then ``drain_timeout_s`` for requests in flight); a
  second signal stops them at once.  SIGHUP and a change of the config file
  (``gateway.config_watch_s``): the file is validated once here, then every worker reloads it
  (an invalid file is logged once and every worker keeps its config).
- **One prober per host.**  Worker 0 probes health and scrapes pool load; the supervisor relays
  each round to the others over their unix-socket links (``gateway/host_link.py``), as it
  relays any state a feature shares between workers.
- **Host totals on /metrics.**  Workers write into a prometheus-client multiprocess directory made
  fresh for this run and removed at exit; a dead worker is marked dead there.
- **Tenant limits per host.**  Without Redis (``auth.shared``) the workers share one table of
  token buckets and in-flight counts (``gateway/hostlimits.py``): the host enforces each limit once.
- Simulated pools of the config (``simulate``) and launched vLLM (``infercdn up --engine vllm``)
  run once, in this process (``Pools``: the composition root's ``infercdn.fleet.LocalFleet``);
  the workers get their addresses."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from gateway import hostlimits
from gateway.config import Config, ConfigError, EndpointCfg, load_config
from gateway.host_link import CONTROL, encode
from gateway.metrics import MULTIPROC_ENV
from gateway.watch import watch_file

log = logging.getLogger("infercdn.workers")

RESTART_MIN_S, RESTART_MAX_S, HEALTHY_AFTER_S = 0.5, 30.0, 30.0
START_TIMEOUT_S = 60.0


CGROUP = Path("/sys/fs/cgroup")


def default_workers(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core node gets 2 workers, not 64).  1 outside Linux,
    whose SO_REUSEPORT is what spreads connections over the workers (macOS's gives all to one)."""
    if not sys.platform.startswith("linux"):
        return 1
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None when unlimited."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if quota in ("max", "-1") else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT and never listening: holds the port
    (port 0: a free one) for the workers, takes no connections."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What every worker of a run is given (a JSON file in the run directory)."""

    config_path: str
    fallback_config: str  # the last copy of the file that validated: a worker restarted after a bad edit uses it
    host: str
    port: int
    hub: str  # the supervisor's unix socket
    simulated: dict[str, list[str]] = field(default_factory=dict)
    endpoints: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # launched vLLM, per pool
    prepare: str | None = None  # "vllm_default": `infercdn up --engine vllm` on the embedded config
    workers: int = 1
    limits: str | None = None  # the host's tenant-limit table (gateway/hostlimits.py)
    entry: str = "gateway.worker_proc"  # the module a worker runs (`python -m`): the composition root names its own

    def dump(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> WorkerSpec:
        return cls(**orjson.loads(Path(path).read_bytes()))


@dataclass(slots=True)
class Child:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    restarts: int = 0
    reload_pending: bool = False  # a reload came while it was starting (SIGHUP would have killed it)


class Supervisor:
    def __init__(self, workers: int, spec: WorkerSpec, run_dir: Path, cfg: Config) -> None:
        self.spec, self.run_dir, self.cfg = spec, run_dir, cfg
        self.children = [Child(i) for i in range(workers)]
        self.metrics_dir = run_dir / "metrics"
        self.stopping = asyncio.Event()
        self.last: dict[str, bytes] = {}  # the latest message of each shared kind, for workers that (re)connect
        self.tasks: list[asyncio.Task[None]] = []
        self.hub: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_all)
        self.metrics_dir.mkdir()
        self.hub = await asyncio.start_unix_server(self._link, self.spec.hub, limit=16 * 1024 * 1024)
        self.tasks = [asyncio.create_task(self._keep(c)) for c in self.children]
        interval = self.cfg.gateway.config_watch_s
        if interval > 0:
            self.tasks.append(asyncio.create_task(watch_file(self.spec.config_path, interval, self.reload_all)))
        pending = {asyncio.create_task(c.ready.wait()) for c in self.children}
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while pending:
                    _, pending = await asyncio.wait(pending, timeout=0.2)
                    dead = [c for c in self.children if c.restarts]
                    if dead:
                        raise RuntimeError(f"worker {dead[0].index} exited while starting (see its log above)")
        except TimeoutError:
            raise RuntimeError(f"the workers did not start within {START_TIMEOUT_S:g} s") from None
        finally:
            for wait in pending:
                wait.cancel()

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.returncode is None]

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.spec.entry, str(self.run_dir / "spec.json"), str(child.index),
            str(child.restarts), env=env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)  # Ctrl-C reaches us alone

    async def _keep(self, child: Child) -> None:
        """Run worker ``child.index`` until the stop, restarting it when it dies."""
        young = 0
        while not self.stopping.is_set():
            child.ready.clear()
            proc = child.proc = await self._spawn(child)
            started = time.monotonic()
            log.info("worker %d started, pid %d", child.index, proc.pid)
            code = await proc.wait()
            self._mark_dead(proc.pid)
            if self.stopping.is_set():
                return
            lived = time.monotonic() - started
            young = young + 1 if lived < HEALTHY_AFTER_S else 0
            delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** max(0, young - 1))
            child.restarts += 1
            log.warning("worker %d (pid %d) exited with %s after %.1f s; restarting it in %.1f s",
                        child.index, proc.pid, code, lived, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's link: relay its probe rounds to the others, note readiness, reload peers."""
        child: Child | None = None
        try:
            while line := await reader.readline():
                msg = orjson.loads(line)
                kind = msg["kind"]
                if kind == "hello":
                    child = self.children[int(msg["index"])]
                    child.writer = writer
                    for last in self.last.values():
                        writer.write(last)
                    writer.write(encode("replayed", index=child.index))  # what it missed has all come
                elif kind == "ready" and child is not None:
                    child.ready.set()
                    log.info("worker %d (pid %d) serving", child.index, child.proc.pid if child.proc else -1)
                    if child.reload_pending:
                        child.reload_pending = False
                        self._reload(only=child)
                elif kind == "reload" and child is not None:
                    self._reload(skip=child)
                elif kind not in CONTROL:  # state shared by the workers: relayed, the latest replayed
                    self.last[kind] = line
                    self._relay(line, child)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.error("bad message on a worker link: %s", exc)
        finally:
            if child is not None and child.writer is writer:
                child.writer = None
            writer.close()

    def _relay(self, line: bytes, source: Child | None) -> None:
        for c in self.children:
            if c is not source and c.writer is not None and not c.writer.is_closing():
                c.writer.write(line)

    def _signal(self, sig: int) -> None:
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(sig)

    def _reload(self, skip: Child | None = None, only: Child | None = None) -> None:
        """SIGHUP to the workers that serve; one still starting gets it once it does (before its
        handler is installed, SIGHUP would end it)."""
        for c in self.children if only is None else [only]:
            if c is skip or c.proc is None or c.proc.returncode is not None:
                continue
            if not c.ready.is_set():
                c.reload_pending = True
                continue
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGHUP)

    def reload_all(self) -> None:
        """SIGHUP or a changed file: validate it once; valid, every worker reloads it."""
        try:
            load_config(self.spec.config_path)
        except ConfigError as exc:
            log.error("config reload refused, the running config is kept:\n%s", exc)
            return
        shutil.copyfile(self.spec.config_path, self.spec.fallback_config)
        log.info("reloading %d workers from %s", len(self.pids), self.spec.config_path)
        self._reload()

    def interrupt(self) -> None:
        """A second stop signal: the workers stop at once (their drain is cut short)."""
        self._signal(signal.SIGTERM)

    async def stop(self) -> None:
        """Drain every worker (they get the signal once), then close the links."""
        self.stopping.set()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self._signal(signal.SIGTERM)
        g = self.cfg.gateway
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(g.drain_notice_s + g.drain_timeout_s + 15):
                await asyncio.gather(*self.tasks[: len(self.children)], return_exceptions=True)
        self._signal(signal.SIGKILL)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None:
                await c.proc.wait()
        if self.hub is not None:
            self.hub.close()
            for c in self.children:
                if c.writer is not None:
                    c.writer.close()


RUN_PREFIX = "infercdn-workers-"


def clean_stale_runs(tmp: Path) -> None:
    """Remove the run directories (metrics, links, limits) of supervisors that were killed
    before they could remove their own."""
    for old in tmp.glob(RUN_PREFIX + "*"):
        try:
            pid = int((old / "supervisor.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours to judge (another user's, or still being set up)


class Pools(Protocol):
    """The local pools a run starts once, before its workers (``infercdn.fleet.LocalFleet``):
    simulator URLs per pool, and the endpoints of what it launched (real vLLM)."""

    urls: dict[str, list[str]]

    async def start(self, cfg: Config) -> None: ...

    async def stop(self) -> None: ...

    def launched_endpoints(self) -> Mapping[str, Sequence[EndpointCfg]]: ...


@contextlib.asynccontextmanager
async def running_workers(cfg: Config, config_path: str | Path, host: str, port: int, workers: int,
                          pools: Pools, *, prepare: str | None = None,
                          entry: str = "gateway.worker_proc") -> AsyncIterator[tuple[int, Supervisor]]:
    """``pools`` (started once, here) and ``workers`` serving processes on one port."""
    clean_stale_runs(Path(tempfile.gettempdir()))
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    (run_dir / "supervisor.pid").write_text(str(os.getpid()))
    holder = reserve_port(host, port)
    supervisor: Supervisor | None = None
    try:
        await pools.start(cfg)
        bound = int(holder.getsockname()[1])
        fallback = run_dir / ("last-good" + Path(config_path).suffix)
        shutil.copyfile(config_path, fallback)
        endpoints = {pool: [e.model_dump() for e in eps] for pool, eps in pools.launched_endpoints().items()}
        hostlimits.create(run_dir / "limits.bin", workers)
        spec = WorkerSpec(str(config_path), str(fallback), host, bound, str(run_dir / "hub.sock"),
                          pools.urls, endpoints, prepare, workers, str(run_dir / "limits.bin"), entry)
        spec.dump(run_dir / "spec.json")
        supervisor = Supervisor(workers, spec, run_dir, cfg)
        await supervisor.start()
        yield bound, supervisor
    finally:
        if supervisor is not None:
            await supervisor.stop()
        holder.close()
        await pools.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


class StopSignals:
    """SIGINT and SIGTERM, caught from the moment this is made: make it before the workers start.
    A signal that arrives while they start is kept (the run stops as soon as it is up); without a
    handler it would be lost, and as PID 1 of a container it is ignored, so the workers would
    serve on and never drain.  A second signal cuts the workers' drain short."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.supervisor: Supervisor | None = None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if self.stop.is_set() and self.supervisor is not None:
            self.supervisor.interrupt()
        self.stop.set()

    async def wait(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        await self.stop.wait()


async def wait_for_stop(supervisor: Supervisor, signals: StopSignals | None = None) -> None:
    """Until SIGINT or SIGTERM (``signals``: caught since before the workers started)."""
    await (signals or StopSignals()).wait(supervisor)
