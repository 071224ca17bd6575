"""The official openai SDK against a real gateway and real simulators on 127.0.0.1."""
from __future__ import annotations

import openai
import pytest

from tests.conftest import LONDON, SINGAPORE, US, base_config


@pytest.fixture
async def three_regions(sim_factory, gateway_factory):
    sims = {region: [await sim_factory(), await sim_factory()] for region in ("us-east", "eu-west", "ap-southeast")}
    gw = await gateway_factory(base_config({r: [s.url for s in ss] for r, ss in sims.items()}))
    return gw, sims


def client_for(gw, ip: str | None = None, **kwargs) -> openai.AsyncOpenAI:
    headers = {"X-Forwarded-For": ip} if ip else {}
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", default_headers=headers,
                              max_retries=0, timeout=20, **kwargs)


async def test_chat_non_stream_through_sdk(three_regions) -> None:
    gw, sims = three_regions
    async with client_for(gw, SINGAPORE) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hello there"}], max_tokens=8)
    completion = raw.parse()
    assert raw.headers["x-infercdn-region"] == "ap-southeast"
    assert raw.headers["x-infercdn-pool"] == "ap-southeast-pool"
    assert raw.headers["x-infercdn-attempts"] == "1"
    assert raw.headers["x-request-id"]
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 8
    assert sum(s.stats.requests_total for s in sims["ap-southeast"]) == 1
    assert sum(s.stats.requests_total for s in sims["us-east"] + sims["eu-west"]) == 0


async def test_chat_stream_with_usage_through_sdk(three_regions) -> None:
    gw, _ = three_regions
    async with client_for(gw, LONDON) as client:
        stream = await client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "stream please"}], max_tokens=12,
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 12


async def test_completions_stream_and_non_stream(three_regions) -> None:
    gw, _ = three_regions
    async with client_for(gw, US) as client:
        done = await client.completions.create(model="tiny-chat", prompt="Once upon a time", max_tokens=5,
                                               temperature=0)
        stream = await client.completions.create(model="tiny-chat", prompt="Once upon a time", max_tokens=5,
                                                 temperature=0, stream=True)
        streamed = "".join([c.choices[0].text async for c in stream if c.choices])
    assert done.choices[0].text == streamed  # greedy: deterministic
    assert done.usage.completion_tokens == 5


@pytest.mark.parametrize(("ip", "region"), [(SINGAPORE, "ap-southeast"), (LONDON, "eu-west"), (US, "us-east")])
async def test_clients_land_in_their_nearest_region(three_regions, ip: str, region: str) -> None:
    gw, _ = three_regions
    async with client_for(gw, ip) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    if raw.headers["x-infercdn-region"] != region:
        import aiohttp
        async with aiohttp.ClientSession() as s, s.get(gw.url + f"/admin/plan?ip={ip}&model=tiny-chat") as r:
            print(await r.text())
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/admin/observations") as r:
            print(await r.text())
    assert raw.headers["x-infercdn-region"] == region


async def test_models_lists_union_of_healthy_pools(sim_factory, gateway_factory) -> None:
    a, b = await sim_factory(model="tiny-chat"), await sim_factory(model="other-model")
    data = base_config({"us-east": [a.url], "eu-west": [b.url]})
    data["pools"][1]["models"] = ["other-model"]
    gw = await gateway_factory(data)
    async with client_for(gw) as client:
        models = sorted(m.id for m in (await client.models.list()).data)
    assert models == ["other-model", "tiny-chat"]


async def test_unknown_model_is_a_404_in_openai_format(three_regions) -> None:
    gw, _ = three_regions
    async with client_for(gw) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


async def test_upstream_400_reaches_the_client_unchanged(three_regions) -> None:
    gw, sims = three_regions
    async with client_for(gw, LONDON) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="tiny-chat", prompt="hi", max_tokens=100_000)
    assert "maximum context length" in info.value.message
    # a 400 is the request's fault: not retried elsewhere
    assert sum(s.stats.requests_total for ss in sims.values() for s in ss) == 1
