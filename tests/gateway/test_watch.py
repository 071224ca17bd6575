"""The config-file watch (gateway.config_watch_s): what counts as a change, and a single-process
gateway reloading on a Kubernetes-style ConfigMap update."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config import parse_config
from infercdn.local import running_gateway
from gateway.watch import signature, watch_file
from tests.conftest import SINGAPORE, base_config
from tests.gateway.test_workers import configmap_dir, configmap_update
from tests.gateway.workers_fixture import BODY


class Ticks:
    """A stand-in for asyncio.sleep: each ``tick()`` lets the watch make one check."""

    def __init__(self) -> None:
        self.waiting: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def sleep(self, _: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        await self.waiting.put(fut)
        await fut

    async def tick(self) -> None:
        """Run one check and wait until the watch is back asleep."""
        (await self.waiting.get()).set_result(None)
        fut = await self.waiting.get()
        await self.waiting.put(fut)  # leave it for the next tick


async def test_watch_sees_edits_swaps_and_ignores_a_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "cm"
    path = configmap_dir(root, "a: 1\n")
    changes: list[Any] = []
    ticks = Ticks()
    task = asyncio.create_task(watch_file(path, 2.0, lambda: changes.append(signature(path)), ticks.sleep))
    try:
        await ticks.tick()
        assert changes == []  # nothing changed
        configmap_update(root, "..v2", "a: 2\n")
        await ticks.tick()
        assert len(changes) == 1 and changes[0][0].endswith("..v2/gw.yaml")
        await ticks.tick()
        assert len(changes) == 1  # once per change
        os.unlink(root / "..data")
        await ticks.tick()
        assert len(changes) == 1  # mid-swap: not there, not a change
        (root / "..data").symlink_to("..v2")
        await ticks.tick()
        assert len(changes) == 1  # back as it was
        (root / "..v2" / "gw.yaml").write_text("a: 3, longer\n")  # an edit in place
        await ticks.tick()
        assert len(changes) == 2
    finally:
        task.cancel()


async def test_single_gateway_reloads_on_a_configmap_swap(tmp_path: Path, geoip_reader: Any, sim_factory,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A ConfigMap update drains a pool: the gateway notices within config_watch_s and routes
    around it; a broken update is refused and the running config kept."""
    near, far = await sim_factory(), await sim_factory()
    data = base_config({"ap-southeast": [near.url], "eu-west": [far.url]})
    data["gateway"].update(access_log="off", config_watch_s=0.05)
    root = tmp_path / "cm"
    path = configmap_dir(root, yaml.safe_dump(data))
    cfg = parse_config(data, str(path))

    async with running_gateway(cfg, "127.0.0.1", 0, config_path=path, geoip_reader=geoip_reader) as (_, port):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async def region() -> str:
                async with session.post(base + "/v1/chat/completions", json=BODY,
                                        headers={"X-Forwarded-For": SINGAPORE}) as r:
                    await r.read()
                    assert r.status == 200
                    return r.headers["x-infercdn-region"]

            async def routed(expected: str) -> None:
                for _ in range(200):  # the watch checks every 50 ms
                    if await region() == expected:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"still not routed to {expected}")

            assert await region() == "ap-southeast"
            data["pools"][0]["draining"] = True
            configmap_update(root, "..v2", yaml.safe_dump(data))
            await routed("eu-west")
            data["pools"][0]["draining"] = False
            data["health"]["interval_s"] = -1
            configmap_update(root, "..v3", yaml.safe_dump(data))
            for _ in range(200):
                if any("config reload refused" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            assert "health.interval_s = -1" in caplog.text
            assert await region() == "eu-west"  # the broken file was refused, the running config kept
