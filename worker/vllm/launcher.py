"""Supervise one vLLM OpenAI server: start it, wait for ``/health``, restart it with capped
exponential backoff when it dies, and on stop drain it (running streams finish, up to a deadline)
before terminating its process tree.

vLLM has no "stop accepting" switch, so draining is announced to the gateway instead: the optional
control port answers ``GET /health`` with 200 only while the server is ready and not draining, and
``GET /status`` with the state as JSON.  The gateway probes that and routes around a draining
worker.  asyncio only, no threads."""
from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from worker.vllm.command import (backoff_delay, build_command, build_env, consecutive_failures,
                                 requests_in_flight, work_dirs)
from worker.register import Registrar
from worker.vllm.config import WorkerConfig

log = logging.getLogger("infercdn.worker.vllm")
POLL_S = 0.5


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    DRAINING = "draining"
    STOPPED = "stopped"


class Supervisor:
    def __init__(self, cfg: WorkerConfig, python: str, work_dir: Path,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, registrar: Registrar | None = None) -> None:
        self.cfg, self.python, self.work_dir = cfg, python, work_dir
        self.registrar = registrar  # --register: announced while ready, withdrawn at once otherwise
        self._renewing: asyncio.Task[None] | None = None
        self.clock, self.rng = clock, rng or random.Random()
        self.state = State.STOPPED
        self.restarts = 0
        self.failures = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "::", "") else self.cfg.host
        return f"http://{host}:{self.cfg.port}"

    def request_stop(self) -> None:
        """First call: drain then stop.  Second call: stop without waiting for streams."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def status(self) -> dict[str, object]:
        return {"state": self.state.value, "model": self.cfg.name, "url": self.base_url,
                "pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "restarts": self.restarts, "failures": self.failures}

    async def run(self) -> int:
        """Supervise until stopped; returns the exit status for the CLI."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            control = await self._start_control()
            try:
                await self._supervise(http)
            finally:
                self.state = State.STOPPED
                if control is not None:
                    await control.cleanup()
                await self._withdraw()
                if self.registrar is not None:
                    await self.registrar.close()
        return 0

    async def _announce(self) -> None:
        if self.registrar is None:
            return
        self.registrar.rejoin()
        await self.registrar.renew()
        self._renewing = asyncio.create_task(self.registrar.run())

    async def _withdraw(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if self.registrar is not None:
            await self.registrar.withdraw()

    async def _supervise(self, http: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            proc = await self._spawn()
            ready_at = await self._wait_ready(http, proc)
            if ready_at is not None:
                self.state = State.READY
                log.info("vLLM ready at %s (pid %d)", self.base_url, proc.pid)
                await self._announce()
                await _first(proc.wait(), self._stop.wait())
                await self._withdraw()  # draining or dead: out of the registry before anything else
            if self._stop.is_set():
                if ready_at is not None and proc.returncode is None:
                    await self._drain(http)
                await self._terminate(proc)
                return
            await self._terminate(proc)  # died, or never became ready in time
            ready_for = None if ready_at is None else self.clock() - ready_at
            self.failures = consecutive_failures(self.failures, ready_for, self.cfg.backoff)
            delay = backoff_delay(self.failures, self.cfg.backoff, self.rng)
            log.warning("vLLM exited (rc %s); restart %d in %.1f s",
                        proc.returncode, self.restarts + 1, delay)
            self.state = State.BACKOFF
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if not self._stop.is_set():
                self.restarts += 1

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.state = State.STARTING
        dirs = work_dirs(self.work_dir)
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        env = build_env(self.cfg, self.work_dir, os.environ, Path(self.cfg.model).is_dir())
        cmd = build_command(self.cfg, self.python)
        log.info("starting: %s", " ".join(cmd))
        # Its own session and process group, so the whole tree (API server + engine core) can be
        # signalled at once and never receives the terminal's Ctrl-C directly.
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=dirs["run"], stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        return self.proc

    async def _wait_ready(self, http: aiohttp.ClientSession,
                          proc: asyncio.subprocess.Process) -> float | None:
        """Poll ``/health`` until 200; None if the process exits, the start times out or a stop
        is requested first."""
        deadline = self.clock() + self.cfg.start_timeout_s
        while proc.returncode is None and not self._stop.is_set():
            if self.clock() >= deadline:
                log.error("vLLM not healthy after %.0f s", self.cfg.start_timeout_s)
                return None
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(self.base_url + "/health") as resp:
                    if resp.status == 200:
                        return self.clock()
            await _first(proc.wait(), self._stop.wait(), timeout=POLL_S)
        return None

    async def _drain(self, http: aiohttp.ClientSession) -> None:
        """Announce draining, then wait for vLLM's running+waiting requests to reach 0 (or the
        deadline, or a second stop request)."""
        self.state = State.DRAINING
        start = self.clock()
        log.info("draining: waiting up to %.0f s for running requests", self.cfg.drain_timeout_s)
        while not self._hurry.is_set() and self.proc and self.proc.returncode is None:
            elapsed = self.clock() - start
            if elapsed >= self.cfg.drain_timeout_s:
                log.warning("drain deadline reached with requests still running")
                return
            if elapsed >= self.cfg.drain_notice_s and await self._in_flight(http) == 0:
                log.info("drained in %.1f s", elapsed)
                return
            await _first(self._hurry.wait(), timeout=POLL_S)

    async def _in_flight(self, http: aiohttp.ClientSession) -> float | None:
        try:
            async with http.get(self.base_url + "/metrics") as resp:
                return requests_in_flight(await resp.text()) if resp.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the API server (it stops its engine), SIGKILL the group after the grace, and
        always sweep the group so no orphaned engine process keeps the memory."""
        if proc.returncode is None:
            _signal(proc.pid, signal.SIGTERM, group=False)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), self.cfg.stop_grace_s)
        _signal(proc.pid, signal.SIGKILL, group=True)
        await proc.wait()

    async def _start_control(self) -> web.AppRunner | None:
        if self.cfg.control_port is None:
            return None
        app = web.Application()
        app.router.add_get("/health", self._control_health)
        app.router.add_get("/status", self._control_status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.cfg.control_host, self.cfg.control_port).start()
        return runner

    async def _control_health(self, _: web.Request) -> web.Response:
        ok = self.state is State.READY
        return web.Response(status=200 if ok else 503, text=self.state.value)

    async def _control_status(self, _: web.Request) -> web.Response:
        return web.json_response(self.status())


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)  # the server is its group's leader (start_new_session)
        else:
            os.kill(pid, sig)


async def _first(*aws: object, timeout: float | None = None) -> None:
    """Wait until the first of ``aws`` completes (or the timeout); cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]  # type: ignore[arg-type]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
