"""Defect 2: once keep-alive comments have sent a stream's 200 head, every failure ends the
stream with the in-band error event (no [DONE], never a second HTTP response inside the
body), on every path: the plain walk, hedging, fallbacks, a refusal.  Defect 3: fallbacks
reach only the models the tenant may use."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import base_config
from tests.security.evil import evil_pools
from tests.security.helpers import CHAT, STREAM, call, openai_error, sse_events


def gated(gate: asyncio.Event, status: bytes, body: bytes = b"{}"):
    async def script(w: asyncio.StreamWriter) -> None:
        await gate.wait()  # until the client has its keep-alive comment
        w.write(b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                % (status, len(body), body))
    return script


async def stream_after_keepalive(url: str, gate: asyncio.Event) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(url + "/v1/chat/completions", json=STREAM) as r:
            first = await r.content.readuntil(b"\n\n")
            assert first == b": keep-alive\n\n"
            gate.set()
            return r.status, first + await r.read()


def assert_in_band_error(status: int, body: bytes, code: str) -> dict:
    assert status == 200
    assert b"HTTP/1.1" not in body and b"[DONE]" not in body
    events = sse_events(body)
    assert all(e.startswith(b":") for e in events[:-1])
    err = openai_error(events[-1].removeprefix(b"data: "))
    assert err["code"] == code
    return err


KEEPALIVE = {"keepalive_comment_s": 0.05}


@pytest.mark.parametrize("hedge", [False, True], ids=["walk", "hedged"])
async def test_every_attempt_failing_after_keepalives_is_an_in_band_error(hedge, gateway_factory) -> None:
    gate = asyncio.Event()
    async with evil_pools(gated(gate, b"503 Service Unavailable"), gated(gate, b"503 Service Unavailable")) as (a, b):
        models = {"*": {"ttft_deadline_s": 10, "total_deadline_s": 30,
                        "hedge": {"enabled": hedge, "after_ms": 1}}}
        gw = await gateway_factory(base_config({"eu-west": [a.url], "us-east": [b.url]}, gateway=KEEPALIVE,
                                               models=models))
        status, body = await stream_after_keepalive(gw.url, gate)
        err = assert_in_band_error(status, body, "no_healthy_upstream")
        assert "eu-west-0" not in err["message"]
        assert (a.posts, b.posts) == (1, 1)


async def test_fallback_models_failing_after_keepalives_end_in_band(gateway_factory) -> None:
    gate = asyncio.Event()
    async with evil_pools(gated(gate, b"503 Service Unavailable"), gated(gate, b"502 Bad Gateway")) as (a, b):
        data = base_config({"eu-west": [a.url]}, gateway=KEEPALIVE,
                           models={"tiny-chat": {"fallbacks": ["big-chat"]}})
        data["pools"].append({"name": "big", "region": "us-east", "models": ["big-chat"],
                              "endpoints": [{"id": "big-0", "url": b.url}]})
        gw = await gateway_factory(data)
        status, body = await stream_after_keepalive(gw.url, gate)
        assert_in_band_error(status, body, "no_healthy_upstream")
        # each one-endpoint pool got its one same-endpoint retry (issue 9), the fallback was
        # tried, then the stream ended in band
        assert (a.posts, b.posts) == (2, 2)


async def test_a_refusal_after_keepalives_ends_in_band(gateway_factory) -> None:
    gate = asyncio.Event()
    refusal = b'{"error":{"message":"prompt too long","type":"invalid_request_error","param":null,"code":null}}'
    async with evil_pools(gated(gate, b"400 Bad Request", refusal)) as (a,):
        gw = await gateway_factory(base_config({"eu-west": [a.url]}, gateway=KEEPALIVE))
        status, body = await stream_after_keepalive(gw.url, gate)
        err = assert_in_band_error(status, body, "upstream_refused")
        assert err["message"] == "prompt too long"


def tenant_config(tiny_url: str, big_url: str) -> dict:
    data = base_config({"eu-west": [tiny_url]}, models={"tiny-chat": {"fallbacks": ["big-chat"]}},
                       auth={"required": True, "tenants": [{"name": "small", "api_keys": ["k-small"],
                                                             "models": ["tiny-chat"]},
                                                            {"name": "all", "api_keys": ["k-all"]}]})
    data["pools"].append({"name": "big", "region": "us-east", "models": ["big-chat"],
                          "endpoints": [{"id": "big-0", "url": big_url}]})
    return data


async def test_fallbacks_reach_only_the_models_the_tenant_may_use(sim_factory, gateway_factory) -> None:
    from tests.gateway.test_failover import dead_url

    big = await sim_factory(model="big-chat")
    gw = await gateway_factory(tenant_config(dead_url(), big.url))
    status, body, _ = await call(gw.url, CHAT, headers={"Authorization": "Bearer k-small"})
    assert status == 503, body  # tiny-chat is down; big-chat is not this tenant's
    assert big.stats.requests_total == 0
    status, body, headers = await call(gw.url, CHAT, headers={"Authorization": "Bearer k-all"})
    assert status == 200 and headers["x-infercdn-model"] == "big-chat"  # a tenant allowed both falls back
    assert big.stats.requests_total == 1
