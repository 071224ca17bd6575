"""Load scraped from an endpoint's /metrics (vLLM's names; the simulator exposes the same ones)
changes routing: a saturated endpoint loses new requests to an idle one, in another region and
inside its pool; parsing matches exact metric names."""
from __future__ import annotations

import asyncio

import aiohttp

from gateway.background import parse_vllm_load
from tests.conftest import LONDON, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
LOAD = {"scrape_interval_s": 0.05, "stale_s": 5.0}


async def _serve(gw_url: str, n: int) -> list[str]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(gw_url + "/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": LONDON}) as r:
                assert r.status == 200
                await r.read()
                out.append(r.headers["x-infercdn-pool"])
    return out


async def _saturate(sim, n: int) -> list[asyncio.Task]:
    """Long generations straight to the simulator (behind the gateway's back: only the scrape sees them)."""
    session = aiohttp.ClientSession()

    async def one() -> None:
        body = {**CHAT, "max_tokens": 1000, "stream": True}
        async with session.post(sim.url + "/v1/chat/completions", json=body) as r:
            async for _ in r.content.iter_any():
                pass

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    tasks.append(asyncio.create_task(_closer(session)))
    await sim.wait_for(lambda s: s.waiting >= n - 1, timeout=5)
    return tasks


async def _closer(session: aiohttp.ClientSession) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()


async def _wait_scraped_waiting(gw, endpoint: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(5):
            while True:
                async with s.get(gw.url + "/admin/observations") as r:
                    view = (await r.json())[endpoint]
                if view["load_fresh"] and (view["waiting"] or 0) > 0:
                    return
                await asyncio.sleep(0.02)


async def _stop(tasks: list[asyncio.Task]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_saturated_region_loses_new_requests_to_the_next(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(max_num_seqs=1, itl_ms=5), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}, load=LOAD))
    assert await _serve(gw.url, 2) == ["eu-west-pool"] * 2  # nearest, idle
    tasks = await _saturate(eu, 4)
    try:
        await _wait_scraped_waiting(gw, "eu-west-0")
        assert await _serve(gw.url, 5) == ["us-east-pool"] * 5
    finally:
        await _stop(tasks)


async def test_saturated_endpoint_loses_the_in_pool_pick(sim_factory, gateway_factory) -> None:
    busy, idle = await sim_factory(max_num_seqs=1, itl_ms=5), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [busy.url, idle.url]}, load=LOAD))
    tasks = await _saturate(busy, 4)
    try:
        await _wait_scraped_waiting(gw, "eu-west-0")
        before = idle.stats.requests_total
        await _serve(gw.url, 8)
        assert idle.stats.requests_total - before == 8
    finally:
        await _stop(tasks)


def test_parse_matches_exact_metric_names() -> None:
    text = "\n".join([
        '# HELP vllm:num_requests_waiting Number of requests waiting.',
        'vllm:num_requests_running{engine="0",model_name="a"} 3.0',
        'vllm:num_requests_running{engine="0",model_name="b"} 1.0',
        'vllm:num_requests_waiting{engine="0",model_name="a"} 2.0',
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="a",reason="capacity"} 9.0',
        'vllm:kv_cache_usage_perc 0.25',
        'vllm:num_requests_waiting_created{engine="0"} 1.7e9',
    ])
    assert parse_vllm_load(text) == {"running": 4.0, "waiting": 2.0, "kv_usage": 0.25}


def test_scraped_counts_reach_the_routing_core_as_whole_numbers() -> None:
    """vLLM's request counts are gauges (floats); the routing core's are ints. A value that is no
    count (NaN, infinite) tells nothing, as a missing one does, and does not stop the others."""
    from aiohttp import web

    from gateway.background import apply_loads
    from gateway.state import OBSERVATIONS
    from routing.observations import ObservationParams, Observations
    from tests.gateway.forward import fakes

    topo = fakes.topology(endpoints=3, pool="p")  # endpoints p-0, p-1, p-2
    app = web.Application()
    app[OBSERVATIONS] = obs = Observations(ObservationParams(), lambda: 0.0)
    obs.sync(topo)
    apply_loads(app, [("p-0", 3.0, 2.0, 0.25), ("p-1", float("nan"), float("inf"), None), ("p-2", None, 1.0, None)])
    loads = [(v.running, v.waiting, v.kv_usage) for v in map(obs.view, ("p-0", "p-1", "p-2"))]
    assert loads == [(3, 2, 0.25), (None, None, None), (None, 1, None)]
    assert all(type(v) is int for r, w, _ in loads for v in (r, w) if v is not None)
