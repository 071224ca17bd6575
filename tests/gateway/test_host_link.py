"""The workers' links through the supervisor (gateway/host_link.py, gateway/workers.py): shared
state reaches the other workers and a worker that starts later; control kinds are refused."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import load_config
from gateway.host_link import HostLink
from gateway.workers import Supervisor, WorkerSpec


async def test_shared_state_is_relayed_and_replayed(tmp_path: Path) -> None:
    hub_path = str(tmp_path / "hub.sock")
    sup = Supervisor(3, WorkerSpec("c.yaml", "l.yaml", "127.0.0.1", 1, hub_path), tmp_path, load_config(None))
    hub = await asyncio.start_unix_server(sup._link, hub_path)
    got: dict[int, list[dict[str, Any]]] = {0: [], 1: [], 2: []}
    arrived = asyncio.Event()
    links: list[HostLink] = []
    contexts = []

    async def join(index: int) -> HostLink:
        link = await HostLink.connect(hub_path, index)
        link.on("drained", lambda msg: (got[index].append(msg), arrived.set()))
        ctx = link.context(web.Application())
        await ctx.__anext__()
        links.append(link)
        contexts.append(ctx)
        return link

    try:
        first, second = await join(0), await join(1)
        first.publish("drained", endpoints=["eu-west-0"])
        async with asyncio.timeout(5):
            await arrived.wait()
        assert got[1] == [{"kind": "drained", "endpoints": ["eu-west-0"]}] and got[0] == []  # not back to itself
        arrived.clear()
        await join(2)  # a worker started later gets the latest state at once
        async with asyncio.timeout(5):
            await arrived.wait()
        assert got[2] == got[1]
        with pytest.raises(ValueError, match="control"):
            second.publish("reload")
    finally:
        for ctx in contexts:
            with pytest.raises(StopAsyncIteration):
                await ctx.__anext__()
        hub.close()
