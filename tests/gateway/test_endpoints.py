"""Issue 10: every endpoint clients use, routed by the request's model or answered by the
gateway for itself, and /v1/models with what the pools report (on simulators, which answer
these as vLLM 0.32 does)."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.model_cards import MODEL_CARDS, cards_round
from tests.conftest import base_config
from tests.e2e_vllm.conformance_table import normal, sse_events
from tests.gateway.test_answer_fidelity import HEADERS, post


@pytest.fixture
async def healthy(sim_factory, gateway_factory):
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    return gw, sim


async def get(url: str, path: str, method: str = "GET") -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url + path, headers=HEADERS) as r:
            return r.status, await r.read(), r.headers


def sse(raw: bytes) -> list[list[Any]]:
    return [[name, normal(orjson.loads(data)) if data.startswith(b"{") else data] for name, data in sse_events(raw)]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/responses", {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 6, "temperature": 0}),
    ("/tokenize", {"model": "tiny-chat", "prompt": "Hello there"}),
    ("/tokenize", {"model": "tiny-chat", "messages": [{"role": "user", "content": "Hello there"}]}),
    ("/detokenize", {"model": "tiny-chat", "tokens": [42, 536, 334]}),
])
async def test_routed_endpoints_answer_as_the_pool(healthy, path: str, body: dict) -> None:
    gw, sim = healthy
    direct_status, direct = await post(sim.url, path, body)
    status, relayed = await post(gw.url, path, body)
    assert status == direct_status == 200
    assert normal(orjson.loads(relayed)) == normal(orjson.loads(direct))


async def test_a_responses_stream_is_relayed_with_its_named_events(healthy) -> None:
    gw, sim = healthy
    body = {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 6, "temperature": 0, "stream": True}
    _, direct = await post(sim.url, "/v1/responses", body)
    status, relayed = await post(gw.url, "/v1/responses", body)
    assert status == 200
    events = sse(relayed)
    assert [name for name, _ in events] == [name for name, _ in sse(direct)]
    assert events[-1][0] == "response.completed"
    assert events == sse(direct)


async def test_a_responses_stream_cut_ends_with_the_in_band_error(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(fault="cut_after:tokens=3"), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    body = {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 12, "temperature": 0, "stream": True}
    status, raw = await post(gw.url, "/v1/responses", body)
    assert status == 200
    events = sse(raw)
    assert "error" in events[-1][1] and not any(name == "response.completed" for name, _ in events)


async def test_an_endpoint_no_pool_serves_is_a_clear_404(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/embeddings", json={"model": "tiny-chat", "input": "Hello there"},
                                headers=HEADERS) as r:
            status, body, attempts = r.status, await r.read(), r.headers["x-infercdn-attempts"]
    assert status == 404
    error = orjson.loads(body)["error"]
    assert error["code"] == "not_found" and "/v1/embeddings" in error["message"]
    assert attempts == "2"  # each pool was asked: the next one might have served it


async def test_vllm_probes_are_answered_by_the_gateway(healthy) -> None:
    gw, sim = healthy
    status, body, _ = await get(gw.url, "/health")
    assert (status, body) == (200, b"")
    status, body, _ = await get(gw.url, "/version")
    assert status == 200 and set(orjson.loads(body)) == {"version"}
    assert sim.stats.requests_total == 0


@pytest.mark.parametrize(("method", "path", "allow"), [("POST", "/v1/models", "GET"),
                                                        ("GET", "/v1/chat/completions", "POST"),
                                                        ("DELETE", "/tokenize", "POST")])
async def test_a_method_a_known_path_does_not_take_is_a_405_with_allow(healthy, method, path, allow) -> None:
    gw, _ = healthy
    status, body, headers = await get(gw.url, path, method)
    assert status == 405 and headers["Allow"] == allow
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
    status, _, _ = await get(gw.url, "/v1/nothing-here", method)
    assert status == 404


async def test_models_carry_what_the_pools_report(healthy) -> None:
    gw, sim = healthy
    async with aiohttp.ClientSession() as session:
        await cards_round(gw.app, session)  # the background round, run now
    assert "tiny-chat" in gw.app[MODEL_CARDS]
    _, direct, _ = await get(sim.url, "/v1/models")
    pool_entry = orjson.loads(direct)["data"][0]
    status, body, _ = await get(gw.url, "/v1/models")
    entry = orjson.loads(body)["data"][0]
    for key in ("max_model_len", "root", "parent", "permission"):
        assert normal(entry[key]) == normal(pool_entry[key]), key  # a permission's id is per answer
    status, body, _ = await get(gw.url, "/v1/models/tiny-chat")
    assert status == 200 and orjson.loads(body) == entry
    status, body, _ = await get(gw.url, "/v1/models/nope")
    assert status == 404 and orjson.loads(body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_tokens_are_counted(healthy, stream: bool) -> None:
    gw, _ = healthy
    body = {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 5, "temperature": 0, "stream": stream}
    status, _ = await post(gw.url, "/v1/responses", body)
    assert status == 200
    _, text, _ = await get(gw.url, "/metrics")
    assert b'infercdn_tokens_total{kind="completion",model="tiny-chat"} 5.0' in text


async def test_tokens_of_a_stream_that_is_never_resumed_are_counted(healthy) -> None:
    gw, _ = healthy
    body = {"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 5, "n": 2, "seed": 1,
            "stream": True, "stream_options": {"include_usage": True}}
    status, _ = await post(gw.url, "/v1/completions", body)
    assert status == 200
    _, text, _ = await get(gw.url, "/metrics")
    assert b'infercdn_tokens_total{kind="completion",model="tiny-chat"} 10.0' in text
