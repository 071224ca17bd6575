"""The supervisor against a stand-in ``vllm.entrypoints.openai.api_server`` (a small aiohttp
server put on the path): restart with backoff, start timeout, drain on stop.  Seconds, no vLLM."""
from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from worker.vllm.config import Backoff, WorkerConfig
from worker.vllm.launcher import State, Supervisor

FAKE = '''
import argparse, asyncio, os, sys
from pathlib import Path
from aiohttp import web

p = argparse.ArgumentParser()
p.add_argument("--port", type=int); p.add_argument("--host")
args, _ = p.parse_known_args()
starts = Path(os.environ["FAKE_STATE"]) / "starts"
n = int(starts.read_text()) + 1 if starts.exists() else 1
starts.write_text(str(n))
if n <= int(os.environ.get("FAKE_CRASHES", "0")):
    sys.exit(3)
running = 0

async def health(_):
    if os.environ.get("FAKE_NEVER_HEALTHY"):
        return web.Response(status=503)
    return web.Response()

async def metrics(_):
    return web.Response(text=f'vllm:num_requests_running{{engine="0"}} {running}\\n'
                             'vllm:num_requests_waiting{engine="0"} 0\\n')

async def hold(request):
    global running
    running += 1
    try:
        await asyncio.sleep(float(request.query["s"]))
    finally:
        running -= 1
    return web.Response(text="done")

app = web.Application()
app.router.add_get("/health", health)
app.router.add_get("/metrics", metrics)
app.router.add_get("/hold", hold)
web.run_app(app, host=args.host, port=args.port, print=None)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    pkg = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    (pkg / "api_server.py").write_text(FAKE)
    return tmp_path / "fake"


def supervisor(tmp_path: Path, fake_root: Path, **overrides: object) -> Supervisor:
    env = {"PYTHONPATH": str(fake_root), "FAKE_STATE": str(tmp_path)}
    env |= overrides.pop("env", {})  # type: ignore[arg-type]
    values: dict[str, object] = {
        "model": "fake", "port": free_port(), "env": env, "start_timeout_s": 20,
        "drain_notice_s": 0.2, "drain_timeout_s": 10, "stop_grace_s": 2,
        "backoff": Backoff(initial_s=0.05, factor=2, max_s=0.2)}
    cfg = WorkerConfig(**(values | overrides))  # type: ignore[arg-type]
    return Supervisor(cfg, sys.executable, tmp_path / "work")


async def wait_for(sup: Supervisor, state: State, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while sup.state is not state:
            await asyncio.sleep(0.02)


async def test_crashing_server_is_restarted_with_backoff(tmp_path: Path, fake_root: Path) -> None:
    sup = supervisor(tmp_path, fake_root, env={"FAKE_CRASHES": "2"})
    task = asyncio.create_task(sup.run())
    await wait_for(sup, State.READY)
    assert (sup.restarts, sup.failures) == (2, 2)
    assert (tmp_path / "starts").read_text() == "3"
    pid = sup.proc.pid if sup.proc else None
    assert sup.status()["pid"] == pid and pid is not None
    sup.request_stop()
    assert await asyncio.wait_for(task, 20) == 0
    assert sup.state is State.STOPPED and sup.status()["pid"] is None


async def test_server_never_healthy_is_killed_after_start_timeout(tmp_path: Path,
                                                                  fake_root: Path) -> None:
    sup = supervisor(tmp_path, fake_root, env={"FAKE_NEVER_HEALTHY": "1"}, start_timeout_s=1.5)
    task = asyncio.create_task(sup.run())
    starts = tmp_path / "starts"
    async with asyncio.timeout(20):
        while not starts.exists() or int(starts.read_text()) < 2:
            await asyncio.sleep(0.05)
    assert sup.restarts == 1 and sup.failures == 1
    sup.request_stop()
    assert await asyncio.wait_for(task, 20) == 0


async def test_stop_drains_running_request_then_stops(tmp_path: Path, fake_root: Path) -> None:
    sup = supervisor(tmp_path, fake_root, control_port=free_port())
    task = asyncio.create_task(sup.run())
    await wait_for(sup, State.READY)
    control = f"http://127.0.0.1:{sup.cfg.control_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(control + "/health") as resp:
            assert resp.status == 200
        held = asyncio.create_task(http.get(sup.base_url + "/hold?s=1.5"))
        await asyncio.sleep(0.3)
        sup.request_stop()
        await wait_for(sup, State.DRAINING)
        async with http.get(control + "/health") as resp:
            assert (resp.status, await resp.text()) == (503, "draining")
        async with http.get(control + "/status") as resp:
            assert (await resp.json())["state"] == "draining"
        resp = await held
        assert (resp.status, await resp.text()) == (200, "done")
    assert await asyncio.wait_for(task, 20) == 0
    assert sup.proc is not None and sup.proc.returncode is not None


async def test_second_stop_skips_the_drain(tmp_path: Path, fake_root: Path) -> None:
    sup = supervisor(tmp_path, fake_root)
    task = asyncio.create_task(sup.run())
    await wait_for(sup, State.READY)
    async with aiohttp.ClientSession() as http:
        held = asyncio.create_task(http.get(sup.base_url + "/hold?s=30"))
        await asyncio.sleep(0.3)
        sup.request_stop()
        await wait_for(sup, State.DRAINING)
        sup.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        with pytest.raises(aiohttp.ClientError):
            await held
