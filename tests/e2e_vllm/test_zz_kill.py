"""Destructive, so it runs last in this folder: SIGKILL to vLLM's API server.  The gateway fails
over to a simulated region without a client seeing an error; the launcher restarts vLLM and the
gateway sends the nearest clients back to it once its control port reports it healthy."""
from __future__ import annotations

import asyncio
import os
import signal

from tests.conftest import LONDON
from tests.e2e_vllm.helpers import CHAT, MARKS, MODEL, healthy, sdk, vllm_config, wait_for, wait_idle
from tests.vllm_fixture import VllmServer

pytestmark = MARKS

RESTART_TIMEOUT_S = 240.0


async def ask(gw_url: str) -> str:
    async with sdk(gw_url, LONDON) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["x-infercdn-region"]


async def test_killed_vllm_fails_over_then_is_restarted_and_used_again(vllm_live: VllmServer, sim_factory,
                                                                       gateway_factory) -> None:
    await wait_idle(vllm_live.url)
    sim = await sim_factory()
    gw = await gateway_factory(vllm_config(vllm_live, {"us-east": [sim.url]}))
    assert await ask(gw.url) == "eu-west"

    before = vllm_live.status()
    assert before and isinstance(before["pid"], int)
    os.kill(before["pid"], signal.SIGKILL)
    # at once, before any probe noticed: the request that meets the dead server is retried elsewhere
    assert await ask(gw.url) == "us-east"
    await wait_for(lambda: _not(healthy(gw.url, "eu-west-0")), 10, "the probe marks eu-west-0 down")
    assert [await ask(gw.url) for _ in range(5)] == ["us-east"] * 5
    assert sim.stats.requests_total >= 6

    loop = asyncio.get_running_loop()
    after = await loop.run_in_executor(None, lambda: vllm_live.wait_state(
        "ready", RESTART_TIMEOUT_S, min_restarts=int(before["restarts"]) + 1))
    assert after["pid"] != before["pid"]
    await wait_for(lambda: healthy(gw.url, "eu-west-0"), 30, "the gateway sees vLLM healthy again")
    await wait_for(lambda: _is_eu(gw.url), 30, "LONDON routed back to eu-west")


async def _not(check) -> bool:  # type: ignore[no-untyped-def]
    return not await check


async def _is_eu(gw_url: str) -> bool:
    return await ask(gw_url) == "eu-west"
