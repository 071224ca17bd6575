"""API keys, tenant model access, data residency and per-tenant limits."""
from __future__ import annotations

import asyncio
import hashlib

import openai
import pytest

from tests.conftest import SINGAPORE, base_config

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gw(sim_factory, gateway_factory):
    sims = {r: await sim_factory(itl_ms=2) for r in ("eu-west", "ap-southeast")}
    data = base_config({r: [s.url] for r, s in sims.items()})
    data["auth"] = {"required": True, "tenants": [
        {"name": "acme", "api_keys": ["sk-acme"]},
        {"name": "eu-bank", "api_key_sha256": [hashlib.sha256(b"sk-bank").hexdigest()], "jurisdictions": ["eu"]},
        {"name": "narrow", "api_keys": ["sk-narrow"], "models": ["tiny-chat"], "requests_per_s": 0.001, "burst": 2},
        {"name": "one-at-a-time", "api_keys": ["sk-one"], "max_concurrent": 1},
    ]}
    gw = await gateway_factory(data)
    gw.sims = sims
    return gw


def client(gw, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10,
                              default_headers={"X-Forwarded-For": SINGAPORE})


async def test_keys_are_required_and_checked(gw) -> None:
    async with client(gw, "sk-wrong") as c:
        with pytest.raises(openai.AuthenticationError) as info:
            await c.chat.completions.create(model="tiny-chat", messages=MSG, max_tokens=2)
    assert info.value.body["code"] == "invalid_api_key"
    async with client(gw, "sk-acme") as c:
        raw = await c.chat.completions.with_raw_response.create(model="tiny-chat", messages=MSG, max_tokens=2)
    assert raw.headers["x-infercdn-region"] == "ap-southeast"


async def test_residency_keeps_a_tenant_in_its_jurisdiction(gw) -> None:
    async with client(gw, "sk-bank") as c:  # key configured only as a SHA-256 digest
        raw = await c.chat.completions.with_raw_response.create(model="tiny-chat", messages=MSG, max_tokens=2)
    assert raw.headers["x-infercdn-region"] == "eu-west"  # Singapore is nearer, but not in the EU


async def test_rate_limit_answers_429_with_retry_after(gw) -> None:
    async with client(gw, "sk-narrow") as c:
        for _ in range(2):
            await c.chat.completions.create(model="tiny-chat", messages=MSG, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="tiny-chat", messages=MSG, max_tokens=2)
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_concurrency_limit(gw) -> None:
    async with client(gw, "sk-one") as c:
        slow = asyncio.create_task(c.chat.completions.create(model="tiny-chat", messages=MSG, max_tokens=200))
        await gw.sims["ap-southeast"].wait_for(lambda s: s.running >= 1, timeout=5)
        with pytest.raises(openai.RateLimitError):
            await c.chat.completions.create(model="tiny-chat", messages=MSG, max_tokens=2)
        assert (await slow).usage.completion_tokens == 200
        await c.chat.completions.create(model="tiny-chat", messages=MSG, max_tokens=2)  # the slot came back


async def test_models_outside_the_tenant_list_are_404(sim_factory, gateway_factory) -> None:
    a, b = await sim_factory(), await sim_factory(model="big-model")
    data = base_config({"eu-west": [a.url], "us-east": [b.url]})
    data["pools"][1]["models"] = ["big-model"]
    data["auth"] = {"tenants": [{"name": "small", "api_keys": ["sk-small"], "models": ["tiny-chat"]}]}
    gw = await gateway_factory(data)
    async with client(gw, "sk-small") as c:
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="big-model", messages=MSG, max_tokens=2)
    async with client(gw, "anything") as c:  # keys optional: unknown keys are the anonymous tenant
        assert (await c.chat.completions.create(model="big-model", messages=MSG, max_tokens=2)).choices
