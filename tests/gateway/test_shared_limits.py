"""Tenant limits for the whole fleet (auth.shared): two gateways on one real Redis server count
a tenant's rate and concurrency together; Redis down, each gateway falls back to its own."""
from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.auth import TenantState
from gateway.config import TenantCfg
from gateway.errors import RateLimited
from gateway.limits import SharedLimits
from tests.conftest import LONDON, base_config
from tests.gateway.test_failover import dead_url

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
KEY = "sk-team-a"

# .ci/run installs Debian's redis-server
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (apt-get install redis-server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A throwaway redis-server on loopback, no persistence."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    assert proc.poll() is None, "redis-server exited"
                    await asyncio.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _config(sim_url: str, shared_url: str | None, **limits: Any) -> dict[str, Any]:
    data = base_config({"eu-west": [sim_url]})
    data["auth"] = {"required": True, "tenants": [{"name": "team-a", "api_keys": [KEY], **limits}]}
    if shared_url is not None:
        data["auth"]["shared"] = {"redis_url": shared_url, "timeout_ms": 200}
    return data


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url + "/v1/chat/completions", json=CHAT,
                            headers={"Authorization": f"Bearer {KEY}", "X-Forwarded-For": LONDON}) as r:
        await r.read()
        return r.status


async def test_rate_is_counted_across_gateways(sim_factory, gateway_factory, redis_url: str) -> None:
    sim = await sim_factory()
    limits = {"requests_per_s": 0.05, "burst": 2}  # no refill within the test
    a = await gateway_factory(_config(sim.url, redis_url, **limits))
    b = await gateway_factory(_config(sim.url, redis_url, **limits))
    alone = await gateway_factory(_config(sim.url, None, **limits))  # per gateway: its own bucket
    async with aiohttp.ClientSession() as s:
        assert [await _status(s, a.url), await _status(s, b.url)] == [200, 200]
        assert [await _status(s, a.url), await _status(s, b.url)] == [429, 429]  # the fleet's burst is spent
        async with s.post(b.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            body = await r.json()
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            assert "all gateways together" in body["error"]["message"]
        assert [await _status(s, alone.url) for _ in range(3)] == [200, 200, 429]


async def test_concurrency_is_counted_across_gateways(sim_factory, gateway_factory, redis_url: str) -> None:
    sim = await sim_factory(itl_ms=20.0)
    a = await gateway_factory(_config(sim.url, redis_url, max_concurrent=1))
    b = await gateway_factory(_config(sim.url, redis_url, max_concurrent=1))
    async with aiohttp.ClientSession() as s:
        async with s.post(a.url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 500},
                          headers={"Authorization": f"Bearer {KEY}"}) as held:
            assert held.status == 200
            await held.content.readuntil(b"\n\n")  # in flight on gateway a
            assert await _status(s, b.url) == 429
            held.close()
        async with asyncio.timeout(5):  # the lease is given back once a's request ends
            while await _status(s, b.url) != 200:
                await asyncio.sleep(0.02)


async def test_lease_of_a_gateway_that_never_released_lapses(redis_url: str) -> None:
    tenant = TenantState(TenantCfg(name="team-a", max_concurrent=1))
    shared = SharedLimits(redis_url, "t:", timeout_s=1.0, lease_s=0.3, clock=time.monotonic)
    shared.connect()
    try:
        assert (await shared.admit(tenant, time.monotonic())).lease  # a gateway admits, then dies without releasing
        with pytest.raises(RateLimited):
            await shared.admit(tenant, time.monotonic())
        async with asyncio.timeout(5):
            while True:
                try:
                    await shared.admit(tenant, time.monotonic())
                    break
                except RateLimited:
                    await asyncio.sleep(0.05)
    finally:
        await shared.close()


async def test_redis_down_each_gateway_applies_its_own_limits(sim_factory, gateway_factory, caplog) -> None:
    sim = await sim_factory()
    caplog.set_level(logging.WARNING, logger="infercdn.limits")
    gw = await gateway_factory(_config(sim.url, dead_url().replace("http", "redis", 1),
                                       requests_per_s=0.05, burst=2))
    async with aiohttp.ClientSession() as s:
        assert [await _status(s, gw.url) for _ in range(3)] == [200, 200, 429]  # served; local bucket
        async with s.get(gw.url + "/metrics") as r:
            assert "infercdn_shared_limit_errors_total 3.0" in await r.text()  # one per request
    warnings = [r.getMessage() for r in caplog.records if r.name == "infercdn.limits"]
    assert len(warnings) == 1 and "each gateway applies its own" in warnings[0]


async def test_token_budget_is_counted_across_gateways(sim_factory, gateway_factory, redis_url: str) -> None:
    sim = await sim_factory()
    a = await gateway_factory(_config(sim.url, redis_url, tokens_per_minute=60))
    b = await gateway_factory(_config(sim.url, redis_url, tokens_per_minute=60))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(a.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 3}, headers=headers) as r:
            usage = (await r.json())["usage"]
            estimate = int(r.headers["x-ratelimit-limit-tokens"]) - int(r.headers["x-ratelimit-remaining-tokens"])
        assert r.status == 200 and estimate >= 1
        async with asyncio.timeout(5):  # a's correction (usage - estimate) reaches Redis in the background
            while True:
                async with s.post(b.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1},
                                  headers=headers) as r:
                    assert r.status == 200
                    left = int(r.headers["x-ratelimit-remaining-tokens"])
                if left <= 60 - usage["total_tokens"] - estimate:
                    break
        # a stream on b overruns what is left of the fleet's budget; it finishes, then a refuses
        async with s.post(b.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 80, "stream": True},
                          headers=headers) as r:
            assert r.status == 200 and (await r.read()).rstrip().endswith(b"data: [DONE]")
        async with asyncio.timeout(5):
            while True:
                async with s.post(a.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
                    body = await r.json()
                if r.status == 429:
                    break
        assert "tokens per minute (all gateways together)" in body["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 30 and r.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_shared_token_bucket_script(redis_url: str) -> None:
    tenant = TenantState(TenantCfg(name="team-b", tokens_per_minute=600))
    shared = SharedLimits(redis_url, "t:", timeout_s=1.0, lease_s=10.0, clock=time.monotonic)
    shared.connect()
    try:
        ticket = await shared.admit(tenant, 0.0, estimate=100)
        assert not ticket.local and 499 <= ticket.quota.tokens.remaining <= 500
        await shared._charge("team-b", 600, 900)  # the answer used 1000 in all
        with pytest.raises(RateLimited) as refused:
            await shared.admit(tenant, 0.0, estimate=50)
        assert refused.value.limit == "tokens" and int(refused.value.headers["Retry-After"]) >= 40
        await shared._charge("team-b", 600, -10_000)  # given back, capped at the limit
        assert (await shared.admit(tenant, 0.0, estimate=1)).quota.tokens.remaining == pytest.approx(599, abs=1)
    finally:
        await shared.close()
