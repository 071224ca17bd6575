"""Load scraped from real vLLM's /metrics changes routing.  The run's one server is started with
``--max-num-seqs 4`` (tests/vllm_fixture.py); long generations sent to it directly (behind the
gateway's back, so only the scrape can see them) fill it and queue more, and new requests through
the gateway then go to a simulator instead: in another region (the pool's queue estimate) or
beside vLLM in the same pool (the power-of-two-choices pick)."""
from __future__ import annotations

import asyncio
import os
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.helpers import (CHAT, MARKS, MODEL, PROMPT, observations, sdk, vllm_config, vllm_metrics,
                                    wait_for, wait_idle)
from tests.vllm_fixture import MAX_NUM_SEQS, VllmServer

# Saturating the one CPU vLLM server on CI's 2 shared cores starves vLLM's API server for tens of
# seconds (requests got no first token within 120 s in full-suite runs; on 2026-11-25, of three
# fresh-clone `.ci/run`s with these tests on, one passed, one saw the scraped queue empty for 10 s,
# one could not get a TCP connection to vLLM for 2 s at a time during 30 s), so these two tests
# pass alone (about 2 s each) but not reliably inside the whole suite.  They run when asked for;
# the same routing on the same code path (vLLM's metric names, scraped) runs in every suite against
# a saturated simulator: tests/gateway/test_load_signals.py.
pytestmark = [*MARKS, pytest.mark.skipif(os.environ.get("INFERCDN_VLLM_LOAD_TESTS") != "1",
                                         reason="set INFERCDN_VLLM_LOAD_TESTS=1 (saturates the CPU vLLM server)")]

QUEUED = 4  # beyond max_num_seqs: vllm:num_requests_waiting == 4
# a saturated 2-core machine answers /metrics slowly: keep a scrape fresh long enough that a slow
# round does not turn the load into "unknown" (counted as no queue) in the middle of the test
LOAD = {"scrape_interval_s": 0.5, "timeout_s": 5.0, "stale_s": 15.0}


async def _generate_forever(http: aiohttp.ClientSession, url: str, max_tokens: int) -> None:
    """Long generations back to back until cancelled: the queue must not drain mid-test.  Lengths
    differ per task: batched together, equal generations would all end at once, and for a moment
    the queued ones would start and nothing would wait (a scrape then rightly reads an idle queue)."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    for _ in range(1000):  # bounded; the block that saturates cancels it long before
        async with http.post(url + "/v1/completions", json=body) as resp:
            async for _ in resp.content.iter_any():
                pass


@contextlib.asynccontextmanager
async def saturated(vllm: VllmServer) -> AsyncIterator[None]:
    """vLLM with every sequence slot busy and QUEUED requests waiting, until the block ends
    (the requests are dropped then, which aborts them)."""
    await wait_idle(vllm.url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        tasks = [asyncio.create_task(_generate_forever(http, vllm.url, 1200 + 211 * i))
                 for i in range(MAX_NUM_SEQS + QUEUED)]
        try:
            async def full() -> bool:
                m = await vllm_metrics(vllm.url)
                return m["vllm:num_requests_running"] == MAX_NUM_SEQS and m["vllm:num_requests_waiting"] > 0
            await wait_for(full, 60, f"vLLM running {MAX_NUM_SEQS} with requests waiting")
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    await wait_idle(vllm.url)


async def pools_serving(gw_url: str, n: int) -> list[str]:
    async with sdk(gw_url, LONDON) as client:
        raws = [await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT, max_tokens=4, temperature=0) for _ in range(n)]
    return [raw.headers["x-infercdn-pool"] for raw in raws]


async def scraped_waiting(gw_url: str, endpoint_id: str) -> int | None:
    view = (await observations(gw_url))[endpoint_id]
    return view["waiting"] if view["load_fresh"] else None


async def test_saturated_vllm_sends_new_requests_to_another_region(vllm_server: VllmServer, sim_factory,
                                                                   gateway_factory) -> None:
    sim = await sim_factory()
    # a short latency memory: probe times measured while the 2 CPUs are saturated fade quickly
    gw = await gateway_factory(vllm_config(vllm_server, {"us-east": [sim.url]}, latency={"half_life_s": 0.5},
                                            load=LOAD))
    await wait_for(lambda: _fresh(gw.url, "eu-west-0"), 10, "a first scrape of vLLM's /metrics")
    assert await pools_serving(gw.url, 3) == ["eu-west-pool"] * 3  # nearest, idle

    async with saturated(vllm_server):
        await wait_for(lambda: _waiting(gw.url, "eu-west-0"), 30, "the gateway scraped vLLM's queue")
        served = await _steady(lambda: pools_serving(gw.url, 5), ["us-east-pool"] * 5)
        assert served == ["us-east-pool"] * 5, _why(await plan(gw.url), await observations(gw.url))
        eu, us = _by_pool((await plan(gw.url))["candidates"])
        # the queue estimate from the scraped gauges is what outweighs eu-west's head start
        assert eu["queue_ms"] > us["queue_ms"] + us["geo_ms"] - eu["geo_ms"]

    # drained: the scrape sees it idle again and the nearest region wins once more
    await wait_for(lambda: _idle_scraped(gw.url, "eu-west-0"), 10, "the gateway scraped vLLM idle")
    await wait_for(lambda: _first_is(gw.url, "eu-west-pool"), 30, "eu-west ranked first again")
    assert await pools_serving(gw.url, 3) == ["eu-west-pool"] * 3


async def _steady(measure: Any, want: list[Any], rounds: int = 10) -> list[Any]:
    """``measure()`` until it gives ``want`` (at most ``rounds`` times).  A saturated vLLM's queue
    can really be empty for an instant (generations that end together, the queued ones starting),
    and a scrape at that instant rightly sends a request there; a window without such an instant
    is what the assertion is about."""
    got: list[Any] = []
    for _ in range(rounds):
        got = await measure()
        if got == want:
            break
    return got


def _why(plan_: dict[str, Any], obs: dict[str, Any]) -> str:
    cands = [{k: c[k] for k in ("pool", "endpoint", "score_ms", "geo_ms", "excess_ms", "queue_ms", "penalty_ms")}
             for c in plan_["candidates"]]
    keys = ("healthy", "ejected", "breaker", "running", "waiting", "load_fresh", "latency_ms", "throttled_until")
    return repr({"candidates": cands, "rejected": plan_["rejected"], "notes": plan_["notes"],
                 "observations": {e: {k: v.get(k) for k in keys} for e, v in obs.items()}})


async def plan(gw_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(gw_url + f"/admin/plan?ip={LONDON}&model={MODEL}") as resp:
        return await resp.json()  # type: ignore[no-any-return]


def _by_pool(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pools = {c["pool"]: c for c in candidates}
    return pools["eu-west-pool"], pools["us-east-pool"]


async def _first_is(gw_url: str, pool: str) -> bool:
    return (await plan(gw_url))["candidates"][0]["pool"] == pool


async def test_saturated_vllm_loses_the_in_pool_pick_to_its_neighbour(vllm_server: VllmServer, sim_factory,
                                                                      gateway_factory) -> None:
    sim = await sim_factory()
    data = vllm_config(vllm_server, load=LOAD)
    data["pools"][0]["endpoints"].append({"id": "eu-west-sim", "url": sim.url})
    gw = await gateway_factory(data)
    await wait_for(lambda: _fresh(gw.url, "eu-west-0"), 10, "a first scrape of vLLM's /metrics")

    async with saturated(vllm_server):
        await wait_for(lambda: _waiting(gw.url, "eu-west-0"), 30, "the gateway scraped vLLM's queue")
        async def eight() -> list[int]:
            before = sim.stats.requests_total
            assert await pools_serving(gw.url, 8) == ["eu-west-pool"] * 8
            return [sim.stats.requests_total - before]
        # every one of 8 goes to the simulator beside vLLM
        assert await _steady(eight, [8]) == [8]


async def _fresh(gw_url: str, endpoint_id: str) -> bool:
    return (await observations(gw_url))[endpoint_id]["load_fresh"] is True


async def _waiting(gw_url: str, endpoint_id: str) -> bool:
    return ((await scraped_waiting(gw_url, endpoint_id)) or 0) > 0


async def _idle_scraped(gw_url: str, endpoint_id: str) -> bool:
    view = (await observations(gw_url))[endpoint_id]
    return view["load_fresh"] and view["waiting"] == 0 and view["running"] == 0
