"""Queueing beyond max_num_seqs, cancellation on client disconnect, and stopping mid-stream."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from worker.sim import Simulator
from worker.sim.testing import parse_sse, running_sim, stream_text

BODY = {"prompt": "the world was new", "temperature": 0, "stream": True}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def read_events(resp: aiohttp.ClientResponse, n: int) -> None:
    seen = 0
    async for line in resp.content:
        seen += line.startswith(b"data: ")
        if seen == n:
            return


async def metric(http: aiohttp.ClientSession, sim: Simulator, name: str) -> float:
    async with http.get(f"{sim.url}/metrics") as resp:
        text = await resp.text()
    return float(next(line for line in text.splitlines() if line.startswith(name + "{")).rsplit(" ", 1)[1])


async def test_requests_beyond_max_num_seqs_wait(http: aiohttp.ClientSession) -> None:
    async with running_sim(ttft_ms=60_000, max_num_seqs=1) as sim:
        calls = [asyncio.create_task(http.post(f"{sim.url}/v1/completions", json=BODY)) for _ in range(3)]
        await sim.wait_for(lambda s: s.running == 1 and s.waiting == 2)
        assert await metric(http, sim, "vllm:num_requests_running") == 1.0
        assert await metric(http, sim, "vllm:num_requests_waiting") == 2.0
        assert await metric(http, sim, "vllm:kv_cache_usage_perc") > 0.0
        responses = await asyncio.gather(*calls)  # headers came back at once
        for resp in responses:
            resp.close()
        await sim.wait_for(lambda s: s.running == 0 and s.waiting == 0 and s.requests_cancelled == 3)
        assert sim.stats.kv_tokens == 0 and sim.stats.tokens_sent == 0


async def test_queued_request_runs_when_a_slot_frees(http: aiohttp.ClientSession) -> None:
    async with running_sim(ttft_ms=0, itl_ms=1, max_num_seqs=1) as sim:
        bodies = await asyncio.gather(*(
            _text(http, f"{sim.url}/v1/completions", {**BODY, "max_tokens": 20}) for _ in range(4)))
        assert len({stream_text(parse_sse(b)[0]) for b in bodies}) == 1 and sim.stats.requests_completed == 4
        assert sim.stats.queue_time.counts != [0] * len(sim.stats.queue_time.counts)


async def _text(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> bytes:
    async with http.post(url, json=body) as resp:
        return await resp.read()


async def test_client_disconnect_mid_stream_stops_generation(http: aiohttp.ClientSession) -> None:
    async with running_sim(ttft_ms=0, itl_ms=2, max_num_seqs=4) as sim:
        resp = await http.post(f"{sim.url}/v1/completions", json={**BODY, "max_tokens": 2000, "ignore_eos": True})
        await asyncio.wait_for(read_events(resp, 5), 5)
        resp.close()
        await sim.wait_for(lambda s: s.requests_cancelled == 1 and s.running == 0)
        sent = sim.stats.tokens_sent
        assert 5 <= sent < 2000 and sim.stats.generation_tokens_total == sent
        assert sim.stats.requests_completed == 0 and sim.stats.finished["abort"] == 1
        # a later request is a time barrier: only its own tokens are added
        await _text(http, f"{sim.url}/v1/completions", {**BODY, "max_tokens": 3})
        assert sim.stats.tokens_sent == sent + 3


async def test_client_leaving_before_the_first_token_is_a_cancellation(http: aiohttp.ClientSession) -> None:
    async with running_sim(ttft_ms=60_000) as sim:
        resp = await http.post(f"{sim.url}/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
        await sim.wait_for(lambda s: s.running == 1)
        resp.close()
        await sim.wait_for(lambda s: s.requests_cancelled == 1 and s.running == 0)


async def test_non_stream_cancellation(http: aiohttp.ClientSession) -> None:
    async with running_sim(ttft_ms=60_000) as sim:
        call = asyncio.create_task(http.post(f"{sim.url}/v1/completions", json={**BODY, "stream": False}))
        await sim.wait_for(lambda s: s.running == 1)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await sim.wait_for(lambda s: s.requests_cancelled == 1 and s.running == 0)
        assert sim.stats.tokens_sent == 0


async def test_stop_ends_in_flight_streams(http: aiohttp.ClientSession) -> None:
    sim = Simulator()
    await sim.start()
    resp = await http.post(f"{sim.url}/v1/completions", json={**BODY, "max_tokens": 100_0, "ignore_eos": True})
    await asyncio.wait_for(read_events(resp, 2), 5)
    await asyncio.wait_for(sim.stop(), 5)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(resp.read(), 5)
    assert sim.stats.requests_completed == 0
