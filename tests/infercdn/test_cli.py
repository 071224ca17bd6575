"""The command line: check, route, and `infercdn up` end to end in a subprocess."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import base_config

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infercdn.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_check_accepts_the_embedded_default() -> None:
    done = cli("check", "configs/local.yaml")
    assert done.returncode == 0, done.stderr
    assert "ok (3 regions, 3 pools, 6 endpoints)" in done.stdout


def test_check_names_file_field_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "local.yaml").read_text().replace("region: ap-southeast\n", "region: mars\n", 1)
    bad.write_text(text)
    done = cli("check", str(bad))
    assert done.returncode == 1
    assert f"{bad}: pools[2].region = 'mars': unknown region" in done.stderr


@pytest.mark.parametrize(("ip", "region"), [("103.4.96.1", "ap-southeast"), ("81.2.69.142", "eu-west"),
                                            ("8.8.8.8", "us-east")])
def test_route_json_with_the_embedded_geoip_database(ip: str, region: str) -> None:
    done = cli("route", "--config", "configs/local.yaml", "--ip", ip, "--model", "tiny-chat", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["candidates"][0]["region"] == region
    assert plan["client"]["source"] == "geoip"
    assert {"geo_ms", "excess_ms", "queue_ms", "penalty_ms", "score_ms"} <= set(plan["candidates"][0])
    scores = [c["score_ms"] for c in plan["candidates"]]
    assert scores == sorted(scores)


def test_route_text_output_explains_rejections(tmp_path: Path) -> None:
    cfg = tmp_path / "draining.yaml"
    cfg.write_text((ROOT / "configs" / "local.yaml").read_text().replace(
        "  - name: ap-southeast-sim\n    region: ap-southeast\n",
        "  - name: ap-southeast-sim\n    region: ap-southeast\n    draining: true\n"))
    done = cli("route", "--config", str(cfg), "--ip", "103.4.96.1", "--model", "tiny-chat")
    assert done.returncode == 0, done.stderr
    assert "rejected ap-southeast-sim: draining" in done.stdout
    assert done.stdout.splitlines()[2].split()[1] == "eu-west"


async def start_up(*args: str) -> tuple[asyncio.subprocess.Process, list[str], str]:
    """`infercdn up --port 0 ARGS` in a subprocess: the process, its banner lines, the gateway URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infercdn.cli", "up", "--port", "0", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any(line.startswith("stop with") for line in lines):
                line = (await proc.stdout.readline()).decode()
                assert line, f"infercdn up exited: {(await proc.stderr.read()).decode()[-2000:]}"
                lines.append(line.strip())
    except BaseException:
        await stop_up(proc)
        raise
    base = next(line.split("gateway ")[1].split(",")[0] for line in lines if line.startswith("infercdn is up"))
    return proc, lines, base


async def stop_up(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        await proc.wait()


async def test_up_routes_clients_by_location_and_fails_over() -> None:
    proc, lines, base = await start_up()
    try:
        pids = {line.split(":")[0]: [int(p) for p in line.split("kill ")[1].split()]
                for line in lines if "-sim: kill " in line}
        assert any("curl" in line for line in lines)
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with aiohttp.ClientSession() as session:
            async def region(ip: str) -> tuple[int, str, str]:
                async with session.post(base + "/v1/chat/completions", json=body,
                                        headers={"X-Forwarded-For": ip}) as r:
                    await r.read()
                    return r.status, r.headers.get("x-infercdn-region", ""), r.headers.get("x-infercdn-attempts", "")
            assert (await region("103.4.96.1"))[:2] == (200, "ap-southeast")
            assert (await region("81.2.69.142"))[:2] == (200, "eu-west")
            assert (await region("8.8.8.8"))[:2] == (200, "us-east")
            for pid in pids["ap-southeast-sim"]:
                os.kill(pid, signal.SIGKILL)
            after = [await region("103.4.96.1") for _ in range(5)]
        assert [(s, r) for s, r, _ in after] == [(200, "eu-west")] * 5  # no failed request
        assert after[-1][2] == "1"  # detected: later requests go straight to eu-west
    finally:
        await stop_up(proc)


async def test_up_reloads_its_config_on_sighup(tmp_path: Path) -> None:
    """An operator edits the routing config of a running `infercdn up` and sends SIGHUP: the new
    routing applies with the simulated endpoints kept; a broken file is refused with its file,
    field and reason, and the running config stays."""
    config = tmp_path / "routing.yaml"
    text = (ROOT / "configs" / "local.yaml").read_text()
    config.write_text(text)
    proc, lines, base = await start_up("--in-process", "--config", str(config))
    log: list[str] = []

    async def log_has(text: str) -> None:
        while not any(text in line for line in log):
            line = (await proc.stderr.readline()).decode()
            assert line, "infercdn up exited"
            log.append(line)

    try:
        assert any(f"routing config: {config}" in line and f"kill -HUP {proc.pid}" in line for line in lines)
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with aiohttp.ClientSession() as session:
            async def region() -> str:
                async with session.post(base + "/v1/chat/completions", json=body,
                                        headers={"X-Forwarded-For": "103.4.96.1"}) as r:
                    await r.read()
                    assert r.status == 200
                    return r.headers["x-infercdn-region"]
            assert await region() == "ap-southeast"
            drained = text.replace("  - name: ap-southeast-sim\n", "  - name: ap-southeast-sim\n    draining: true\n")
            assert drained != text
            config.write_text(drained)
            proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(20):
                await log_has(f"config reloaded from {config}")
            assert await region() != "ap-southeast"  # drained: Singapore goes elsewhere
            assert not any("after a restart" in line for line in log)  # nothing left for a restart

            config.write_text(drained.replace("ttft_ms: 40", "ttft_ms: -5", 1))
            proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(20):
                await log_has("config reload refused")
                await log_has(f"{config}: pools[0].simulate.ttft_ms = -5: Input should be greater than or equal to 0")
            assert await region() != "ap-southeast"  # the running config is kept
            async with session.get(base + "/admin/observations") as r:
                assert sum(1 for ep in await r.json() if "-sim" in ep) == 6  # no endpoint lost
    finally:
        await stop_up(proc)


async def test_gateway_drains_on_sigterm(tmp_path: Path, sim_factory) -> None:
    """SIGTERM to `infercdn gateway`: /readyz turns 503 "draining" while requests are still served
    (drain_notice_s), then the listener closes, and a stream in flight still ends complete before
    the process exits 0."""
    sim = await sim_factory(itl_ms=20.0)
    data = base_config({"eu-west": [sim.url]})
    data["gateway"].update(drain_notice_s=3.0, drain_timeout_s=30, access_log="off")
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infercdn.cli", "gateway", "--config", str(config), "--port", "0", cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert "listening on" in line, line + (await proc.stderr.read()).decode()[-2000:]
        base = line.split("listening on ")[1].split()[0]
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60,
                "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(base + "/v1/chat/completions", json=body) as stream:
                assert stream.status == 200
                got = await stream.content.readuntil(b"\n\n")
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5):  # the notice period: not ready, still serving
                    while True:
                        async with session.get(base + "/readyz") as r:
                            if r.status == 503:
                                assert (await r.json())["status"] == "draining"
                                break
                        await asyncio.sleep(0.02)
                async with session.get(base + "/v1/models") as r:
                    assert r.status == 200
                got += await stream.read()  # the stream in flight runs to its end
            assert got.rstrip().endswith(b"data: [DONE]")
            assert got.count(b'"content"') >= 60
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
        with pytest.raises(OSError):  # the listener is gone
            socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=1).close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
