"""Token budgets per tenant (tenants[].tokens_per_minute) and OpenAI's x-ratelimit-* headers,
against the simulator; the fleet-wide (Redis) budget is in test_shared_limits.py."""
from __future__ import annotations

import re

import aiohttp
import openai
import pytest

from gateway.auth import TenantState
from gateway.config import TenantCfg
from gateway.errors import RateLimited
from gateway.limits import admit_local, done
from gateway.quota import estimate_prompt_tokens, go_duration, used_tokens
from tests.conftest import LONDON, base_config

KEY = "sk-team-a"
AUTH = {"Authorization": f"Bearer {KEY}", "X-Forwarded-For": LONDON}


def chat(max_tokens: int, stream: bool = False, usage: bool = False) -> dict:
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": max_tokens, "stream": stream}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def config(sim_url: str, **limits: object) -> dict:
    data = base_config({"eu-west": [sim_url]})
    data["auth"] = {"required": True, "tenants": [{"name": "team-a", "api_keys": [KEY], **limits}]}
    return data


@pytest.mark.parametrize(("seconds", "text"), [(0, "0ms"), (0.12, "120ms"), (0.9999, "1s"), (1, "1s"),
                                               (8.64, "8.64s"), (60, "1m0s"), (360, "6m0s"), (86.4, "1m26.4s"),
                                               (3661.5, "1h1m1.5s")])
def test_resets_are_written_as_go_durations_like_openai(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_prompt_estimate_is_bytes_over_four() -> None:
    assert estimate_prompt_tokens("completions", {"prompt": "x" * 400}) == 100
    assert estimate_prompt_tokens("completions", {"prompt": [1, 2, 3]}) == 3
    assert estimate_prompt_tokens("completions", {"prompt": ["x" * 40, [1, 2]]}) == 12
    parts = [{"type": "text", "text": "y" * 80}, {"type": "image_url", "image_url": {"url": "data:"}}]
    assert estimate_prompt_tokens("chat", {"messages": [{"role": "user", "content": "x" * 40},
                                                        {"role": "user", "content": parts}]}) == 10 + 20 + 2 * 4
    assert estimate_prompt_tokens("chat", {"messages": []}) == 1
    assert used_tokens({"prompt_tokens": 7, "completion_tokens": 5}, 99, 10_000) == (7, 5)
    assert used_tokens(None, 9, 11) == (9, 10)


def test_local_budget_lets_a_request_finish_then_refuses_the_next_until_refilled() -> None:
    tenant = TenantState(TenantCfg(name="t", tokens_per_minute=600))  # 10 tokens/s
    ticket = admit_local(tenant, now=0.0, estimate=50)
    assert ticket.quota.tokens is not None and ticket.quota.tokens.remaining == 550
    done(None, tenant, ticket, used=50 + 700)  # the answer ran past the budget: it finished
    assert tenant.budget == -150
    with pytest.raises(RateLimited) as refused:
        admit_local(tenant, now=1.0, estimate=20)  # -140 now: 160 missing, 16 s
    assert refused.value.limit == "tokens"
    assert refused.value.headers["Retry-After"] == "16"
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.value.headers["x-ratelimit-reset-tokens"] == "1m14s"  # 740 tokens to full
    assert admit_local(tenant, now=17.0, estimate=20).quota.tokens.remaining == pytest.approx(0)
    assert tenant.inflight == 1  # the refused request took no slot


async def test_headers_on_every_answer_and_429_after_a_stream_overran_the_budget(
        sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(config(sim.url, tokens_per_minute=60, requests_per_s=0.01, burst=5))
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/chat/completions", json=chat(3), headers=AUTH) as r:
            body = await r.json()
            first = dict(r.headers)
        assert r.status == 200
        assert first["x-ratelimit-limit-requests"] == "5" and first["x-ratelimit-remaining-requests"] == "4"
        assert first["x-ratelimit-limit-tokens"] == "60"
        estimate = estimate_prompt_tokens("chat", chat(3))
        assert first["x-ratelimit-remaining-tokens"] == str(60 - estimate)
        assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms|\d+m[\d.]+s", first["x-ratelimit-reset-tokens"])
        used = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]

        # a stream asking for more than is left: it runs to the end ([DONE]) all the same
        async with s.post(gw.url + "/v1/chat/completions", json=chat(80, stream=True, usage=True),
                          headers=AUTH) as r:
            text = (await r.read()).decode()
            assert r.status == 200 and "x-ratelimit-remaining-tokens" in r.headers
        assert text.rstrip().endswith("data: [DONE]")
        assert '"completion_tokens":80' in text.replace(" ", "")

        async with s.post(gw.url + "/v1/chat/completions", json=chat(3), headers=AUTH) as r:
            refused = await r.json()
            assert r.status == 429
            assert int(r.headers["Retry-After"]) >= 30  # 60 - 2 answers (~100 tokens) at 1 token/s
            assert r.headers["x-ratelimit-remaining-tokens"] == "0"
            assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert refused["error"]["code"] == "rate_limit_exceeded" and "tokens per minute" in refused["error"]["message"]

        async with s.post(gw.url + "/v1/chat/completions", json={"model": "nope", "messages": []},
                          headers=AUTH) as r:  # an error before admission carries them too
            assert r.status == 404 and r.headers["x-ratelimit-limit-tokens"] == "60"
        async with s.get(gw.url + "/metrics") as r:
            metrics = await r.text()
    assert f'infercdn_tenant_tokens_total{{kind="completion",tenant="team-a"}} {3.0 + 80:.1f}' in metrics
    assert 'infercdn_tenant_rate_limited_total{limit="tokens",tenant="team-a"}' in metrics
    assert 'infercdn_tenant_requests_total{tenant="team-a"} 2.0' in metrics
    assert used < 60


async def test_a_stream_without_usage_is_charged_an_estimate(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(config(sim.url, tokens_per_minute=1000))
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/chat/completions", json=chat(40, stream=True), headers=AUTH) as r:
            assert "usage" not in (await r.read()).decode()
        async with s.get(gw.url + "/metrics") as r:
            metrics = await r.text()
    completion = re.search(r'infercdn_tenant_tokens_total\{kind="completion",tenant="team-a"\} (\S+)', metrics)
    assert completion is not None and 38 <= float(completion.group(1)) <= 41  # 40 streamed, counted


async def test_the_openai_sdk_sees_the_headers_and_the_429(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(config(sim.url, tokens_per_minute=30))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0,
                                default_headers={"X-Forwarded-For": LONDON})
    raw = await client.chat.completions.with_raw_response.create(**chat(50))
    assert raw.headers["x-ratelimit-limit-tokens"] == "30" and raw.headers["x-ratelimit-remaining-tokens"]
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(**chat(2))
    assert refused.value.response.headers["retry-after"]
    await client.close()


async def test_tenants_without_limits_get_no_ratelimit_headers(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(config(sim.url))
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", json=chat(2),
                                                    headers=AUTH) as r:
        assert r.status == 200
        assert not [h for h in r.headers if h.lower().startswith("x-ratelimit-")]
