"""Shared pieces of the real-vLLM end-to-end tests: marks, gateway configs around the one vLLM
server of the run, the openai clients, and vLLM's own /metrics."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import base_config
from tests.vllm_fixture import REQUIRE_ENV, SERVED_NAME, VllmServer, unavailable_reason

# as tests/worker/test_vllm_real.py: skipped without the env vars, failing under INFERCDN_REQUIRE_VLLM=1
MARKS = [
    pytest.mark.vllm,
    pytest.mark.timeout(300),
    pytest.mark.skipif(unavailable_reason() is not None and os.environ.get(REQUIRE_ENV) != "1",
                       reason=unavailable_reason() or ""),
]

MODEL = SERVED_NAME
CHAT = [{"role": "user", "content": "Write a function that adds two numbers."}]
PROMPT = "def add(a, b):"
# a 2-core CPU shared with other work: generous deadlines, never timing assertions
MODELS_CFG = {"*": {"ttft_deadline_s": 30, "stall_timeout_s": 20, "total_deadline_s": 120}}
HEALTH_CFG = {"interval_s": 0.2, "timeout_s": 2.0, "rise": 1, "fall": 2}


def vllm_config(vllm: VllmServer, others: dict[str, list[str]] | None = None, *,
                region: str = "eu-west", **sections: Any) -> dict[str, Any]:
    """base_config with the vLLM server as ``{region}-0`` (probed through the launcher's control
    port, which also reports draining) and simulators or other URLs in ``others``."""
    pools = {region: [vllm.url], **(others or {})}
    # vLLM renders /metrics on its API server's event loop: scraped five times a second on these
    # 2 cores, it held streamed output back for seconds (seen as stalls and late aborts)
    sections = {"load": {"scrape_interval_s": 1.0, "stale_s": 5.0}, **sections}
    data = base_config(pools, models=MODELS_CFG, health=HEALTH_CFG, **sections)
    data["pools"][0]["endpoints"][0]["health_url"] = vllm.control_url + "/health"
    return data


def sdk(base_url: str, ip: str | None = None) -> openai.AsyncOpenAI:
    headers = {"X-Forwarded-For": ip} if ip else {}
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", default_headers=headers,
                              max_retries=0, timeout=120)


async def vllm_metrics(url: str) -> dict[str, float]:
    """vLLM's /metrics, each ``vllm:`` series summed over its labels."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took.  Fails the test after ``timeout``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def wait_idle(url: str, timeout: float = 60.0) -> None:
    """vLLM has nothing running or waiting (earlier tests' aborted requests are gone)."""
    async def idle() -> bool:
        m = await vllm_metrics(url)
        return m.get("vllm:num_requests_running") == 0 and m.get("vllm:num_requests_waiting") == 0
    await wait_for(idle, timeout, "vLLM idle")


async def observations(gw_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(gw_url + "/admin/observations") as resp:
        return await resp.json()  # type: ignore[no-any-return]


async def healthy(gw_url: str, endpoint_id: str) -> bool:
    view = (await observations(gw_url)).get(endpoint_id) or {}
    return bool(view.get("healthy")) and not view.get("ejected")


def cut_first_pool(vllm: VllmServer, proxy_url: str) -> dict[str, Any]:
    """A config with vLLM twice: eu-west-0 through a cutting proxy at ``proxy_url``, us-east-0 directly."""
    data = vllm_config(vllm, {"us-east": [vllm.url]})
    data["pools"][0]["endpoints"][0]["url"] = proxy_url
    return data
