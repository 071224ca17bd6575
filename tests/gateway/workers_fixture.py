"""``infercdn gateway --workers N`` in a subprocess for the tests: its URL, worker pids and log."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@dataclass
class WorkersGateway:
    proc: asyncio.subprocess.Process
    base: str
    pids: list[int]
    log: list[str] = field(default_factory=list)

    async def log_has(self, text: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Read the gateway's stderr until ``text`` appeared ``count`` times; the lines with it."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while len(hits := [line for line in self.log if text in line]) < count:
                line = (await self.proc.stderr.readline()).decode()
                assert line, f"the gateway exited; its log:\n{''.join(self.log)[-3000:]}"
                self.log.append(line)
        return hits

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def workers_gateway(config: Path, workers: int = 2) -> AsyncIterator[WorkersGateway]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infercdn.cli", "gateway", "--config", str(config), "--port", "0",
        "--workers", str(workers), cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        assert "listening on" in line, line + (await proc.stderr.read()).decode()[-3000:]
        pids = [int(p) for p in re.search(r"pids ([\d ]+);", line).group(1).split()]  # type: ignore[union-attr]
        gw = WorkersGateway(proc, line.split("listening on ")[1].split()[0], pids)
        yield gw
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def by_worker(base: str, call: Callable[[aiohttp.ClientSession], Any], workers: int = 2,
                    tries: int = 200) -> dict[str, Any]:
    """``call`` on fresh connections (the kernel picks a worker for each) until every worker
    answered once: worker index -> what ``call`` returned there (response, value)."""
    seen: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(tries):
            worker, value = await call(session)
            seen.setdefault(worker, value)
            if len(seen) == workers:
                return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {tries} connections")


def chat(base: str, ip: str) -> Callable[[aiohttp.ClientSession], Any]:
    """A call for ``by_worker``: one chat request from ``ip``; (worker, (status, region))."""
    async def call(session: aiohttp.ClientSession) -> tuple[str, tuple[int, str]]:
        async with session.post(base + "/v1/chat/completions", json=BODY, headers={"X-Forwarded-For": ip}) as r:
            await r.read()
            return r.headers["x-infercdn-worker"], (r.status, r.headers.get("x-infercdn-region", ""))
    return call


def metric_total(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus text page."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))
