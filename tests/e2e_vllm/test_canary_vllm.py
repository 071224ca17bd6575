"""The canary against real vLLM: the vLLM endpoint serving the tiny model (an operator-verified
static pool) is the reference and passes; a simulator registered under the same model name by
another provider is caught and gets no client traffic."""
from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest

from routing.announce import token_hash
from tests.conftest import LONDON
from tests.e2e_vllm.helpers import MARKS, MODEL, vllm_config
from tests.gateway.test_shared_limits import redis_url  # noqa: F401 - a throwaway redis-server
from worker.register import Registrar, Registration

pytestmark = [*MARKS, pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")]


async def test_vllm_is_the_reference_and_a_registered_simulator_is_caught(vllm_server, sim_factory, gateway_factory,
                                                                          redis_url: str) -> None:  # noqa: F811
    data = vllm_config(vllm_server, canary={"interval_s": 2.0, "max_tokens": 4, "timeout_s": 60})
    data["pools"][0]["tags"] = ["verified"]
    data["registry"] = {"redis_url": redis_url, "poll_s": 0.2,
                        "providers": [{"name": "shady", "token_sha256": token_hash("t")}]}
    gw = await gateway_factory(data)
    sim = await sim_factory(model=MODEL)
    reg = Registrar.build(Registration(redis_url, "shady", "eu-west", "t", lease_s=30), sim.url, (MODEL,), 2048)
    await reg.renew()
    sim_id, vllm_id = "shady:" + sim.url.removeprefix("http://"), "eu-west-0"
    try:
        async with aiohttp.ClientSession() as s:
            async with asyncio.timeout(240):
                while True:
                    async with s.get(gw.url + "/admin/canary") as r:
                        verdicts = (await r.json())["endpoints"]
                    if verdicts.get(sim_id, {}).get("result") == "fail" and vllm_id in verdicts:
                        break
                    await asyncio.sleep(0.5)
            assert verdicts[vllm_id] == {**verdicts[vllm_id], "result": "pass", "reason": "reference"}
            assert verdicts[sim_id]["evidence"]["check"] == "tokens"
            body = {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 2}
            for _ in range(2):
                async with s.post(gw.url + "/v1/completions", json=body, headers={"X-Forwarded-For": LONDON}) as r:
                    assert r.status == 200 and (await r.json())["model"] == MODEL
            async with s.get(gw.url + "/metrics") as r:
                text = await r.text()
        # the simulator saw the canary's requests only
        assert [ln for ln in text.splitlines() if ln.startswith("infercdn_upstream_attempts_total") and sim_id in ln] == []
        assert f'infercdn_upstream_attempts_total{{endpoint="{vllm_id}",outcome="success",pool="eu-west-pool"}} 2.0' in text
        assert sim.stats.paths["/v1/completions"] >= 2
    finally:
        await reg.withdraw()
        await reg.close()
