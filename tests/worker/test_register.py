"""Worker side of self-registration: flags, what is announced, and the vLLM supervisor announcing
only while the server is ready and withdrawing the moment it drains (a stand-in registrar records
the calls; the Redis round trip is tested in tests/gateway/test_open_fleet.py)."""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.worker.test_vllm_launcher import fake_root, supervisor, wait_for  # noqa: F401
from worker import register
from worker.vllm.cli import registrar_for
from worker.vllm.config import build_config
from worker.vllm.launcher import State


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_need_provider_region_and_token() -> None:
    assert register.from_args(parse()) is None
    with pytest.raises(ValueError, match=r"--provider, --region, \$INFERCDN_PROVIDER_TOKEN"):
        register.from_args(parse("--register", "redis://r:6379"), environ={})
    with pytest.raises(ValueError, match="redis://"):
        register.from_args(parse("--register", "http://r", "--provider", "p", "--region", "eu"), {"INFERCDN_PROVIDER_TOKEN": "t"})
    args = parse("--register", "redis://r:6379", "--provider", "p", "--region", "eu", "--price", "0.4")
    reg = register.from_args(args, {"INFERCDN_PROVIDER_TOKEN": "t"}, listen_host="127.0.0.1")
    assert reg == register.Registration("redis://r:6379", "p", "eu", "t", 0.4)
    with pytest.raises(ValueError, match="--advertise-url"):  # 0.0.0.0 is no address for a gateway
        register.from_args(args, {"INFERCDN_PROVIDER_TOKEN": "t"}, listen_host="0.0.0.0")


def test_vllm_announces_its_served_name_and_the_control_ports_health() -> None:
    cfg = build_config({"model": "/m", "served_model_name": "tiny-chat", "host": "0.0.0.0", "port": 8001,
                        "max_model_len": 2048, "control_port": 9001})
    reg = register.Registration("redis://r", "acme", "eu-west", "t", advertise_url="http://gpu7.acme.net:8001")
    r = registrar_for(cfg, reg)
    assert r is not None
    a = r.announcement
    assert (a.url, a.health_url, a.models, a.max_model_len, a.id) == (
        "http://gpu7.acme.net:8001", "http://gpu7.acme.net:9001/health", ("tiny-chat",), 2048, "gpu7.acme.net:8001")


class Recorder:
    """Duck-typed Registrar: records the supervisor's calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.withdrawn = False

    def rejoin(self) -> None:
        self.withdrawn = False
        self.calls.append("rejoin")

    async def renew(self) -> bool:
        self.calls.append("renew")
        return True

    async def run(self) -> None:
        await asyncio.Event().wait()  # renews until cancelled

    async def withdraw(self) -> None:
        if not self.withdrawn:
            self.withdrawn = True
            self.calls.append("withdraw")

    async def close(self) -> None:
        self.calls.append("close")


async def test_supervisor_withdraws_when_the_drain_starts(tmp_path: Path, fake_root: Path) -> None:  # noqa: F811
    sup = supervisor(tmp_path, fake_root)
    rec = sup.registrar = Recorder()  # type: ignore[assignment]
    task = asyncio.create_task(sup.run())
    await wait_for(sup, State.READY)
    async with asyncio.timeout(10):
        while "renew" not in rec.calls:
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as http:
        held = asyncio.create_task(http.get(sup.base_url + "/hold?s=1.5"))
        await asyncio.sleep(0.3)
        sup.request_stop()
        await wait_for(sup, State.DRAINING)
        assert rec.calls == ["rejoin", "renew", "withdraw"]  # gone from the registry while streams finish
        resp = await held
        assert resp.status == 200
    assert await asyncio.wait_for(task, 20) == 0
    assert rec.calls == ["rejoin", "renew", "withdraw", "close"]
