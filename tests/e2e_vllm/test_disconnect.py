"""A client that leaves mid-stream frees the real engine: vLLM aborts the generation at once
(its own /metrics show nothing running, no request finished and the generated-token counter
standing still well short of max_tokens)."""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.helpers import CHAT, MARKS, MODEL, PROMPT, sdk, vllm_config, vllm_metrics, wait_for, wait_idle
from tests.vllm_fixture import VllmServer

pytestmark = MARKS

RUNNING, GENERATED = "vllm:num_requests_running", "vllm:generation_tokens_total"
# counts requests that finished (stop, length, ...); vLLM drops the final output of an aborted
# request before its stats, so a generation cut by the client leaves it unchanged
FINISHED = "vllm:request_success_total"
MAX_TOKENS = 2000


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_client_disconnect_aborts_generation_in_vllm(vllm_server: VllmServer, gateway_factory,
                                                           kind: str) -> None:
    await wait_idle(vllm_server.url)
    gw = await gateway_factory(vllm_config(vllm_server))
    args = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "extra_body": {"ignore_eos": True}}

    async def stopped() -> bool:
        return (await vllm_metrics(vllm_server.url))[RUNNING] == 0

    # The client leaves at its first token, before asking vLLM anything: on these 2 shared cores
    # vLLM's API server can answer /metrics (and hold streamed output back) for seconds while the
    # engine keeps generating.  A round whose generation finished before the client could leave
    # (the finished counter moved) proves nothing and is run again (at most 3).
    for _ in range(3):
        before = await vllm_metrics(vllm_server.url)
        async with sdk(gw.url, LONDON) as client:
            if kind == "chat":
                stream = await client.chat.completions.create(messages=CHAT, **args)
            else:
                stream = await client.completions.create(prompt=PROMPT, **args)
            async for _ in stream:
                break
            await stream.close()
        await wait_for(stopped, 10, "vLLM's num_requests_running back to 0 after the client left")
        left = await vllm_metrics(vllm_server.url)
        if left.get(FINISHED, 0.0) == before.get(FINISHED, 0.0):
            break
    assert left.get(FINISHED, 0.0) == before.get(FINISHED, 0.0), \
        "the generation must be cut by the client leaving, not run to max_tokens"

    settled = left[GENERATED]
    await asyncio.sleep(1.0)
    after = await vllm_metrics(vllm_server.url)
    assert after[GENERATED] == settled, "vLLM kept generating for nobody"
    assert after[GENERATED] - before[GENERATED] < MAX_TOKENS  # it stopped well short of max_tokens
    assert after.get(FINISHED, 0.0) == before.get(FINISHED, 0.0)
    assert after["vllm:num_requests_waiting"] == 0
