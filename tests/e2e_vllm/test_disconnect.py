"""A client that leaves mid-stream frees the real engine: vLLM aborts the generation at once
(its own /metrics show nothing running and the generated-token counter standing still)."""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.helpers import CHAT, MARKS, MODEL, PROMPT, sdk, vllm_config, vllm_metrics, wait_for, wait_idle
from tests.vllm_fixture import VllmServer

pytestmark = MARKS

RUNNING, GENERATED = "vllm:num_requests_running", "vllm:generation_tokens_total"


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_client_disconnect_aborts_generation_in_vllm(vllm_server: VllmServer, gateway_factory,
                                                           kind: str) -> None:
    await wait_idle(vllm_server.url)
    gw = await gateway_factory(vllm_config(vllm_server))
    args = {"model": MODEL, "max_tokens": 2000, "temperature": 0, "stream": True,
            "extra_body": {"ignore_eos": True}}
    # On these 2 shared cores vLLM's API server sometimes holds its output back for seconds while
    # the engine keeps generating (seen with and without the gateway); a generation that finished
    # before the client could leave proves nothing, so such a round is run again (at most 3).
    for _ in range(3):
        before = await vllm_metrics(vllm_server.url)
        async with sdk(gw.url, LONDON) as client:
            if kind == "chat":
                stream = await client.chat.completions.create(messages=CHAT, **args)
            else:
                stream = await client.completions.create(prompt=PROMPT, **args)
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 5:
                    break
            during = await vllm_metrics(vllm_server.url)
            await stream.close()
        if during[RUNNING] == 1:
            break
        await wait_idle(vllm_server.url)
    assert during[RUNNING] == 1, "the generation must still be running when the client leaves"

    async def stopped() -> bool:
        return (await vllm_metrics(vllm_server.url))[RUNNING] == 0
    await wait_for(stopped, 10, "vLLM's num_requests_running back to 0 after the client left")
    settled = (await vllm_metrics(vllm_server.url))[GENERATED]
    await asyncio.sleep(1.0)
    after = await vllm_metrics(vllm_server.url)
    assert after[GENERATED] == settled, "vLLM kept generating for nobody"
    assert after[GENERATED] - before[GENERATED] < 2000  # it stopped well short of max_tokens
    assert after["vllm:num_requests_waiting"] == 0
