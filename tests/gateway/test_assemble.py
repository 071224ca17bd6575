"""Non-stream requests served from an upstream stream: the answer assembled from the events,
and what that buys (the first-token deadline, resume), against the real simulator."""
from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.forward.assembled import _documents, assemble, can_assemble
from gateway.sse import events, parse_event
from tests.conftest import LONDON, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 12,
        "temperature": 0}
PROMPT = {"model": "tiny-chat", "prompt": "once upon a time", "max_tokens": 12, "temperature": 0}


@pytest.mark.parametrize(("extra", "ok"), [
    ({}, True), ({"n": 1}, True), ({"logprobs": False}, True), ({"response_format": {"type": "json_object"}}, True),
    ({"n": 2}, False), ({"logprobs": True}, False), ({"top_logprobs": 2}, False), ({"logprobs": 3}, False),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, False), ({"echo": True}, False),
    ({"return_token_ids": True}, False), ({"stream_options": {"include_usage": True}}, False),
])
def test_which_requests_are_assembled(extra: dict[str, Any], ok: bool) -> None:
    assert can_assemble({**CHAT, **extra}) is ok


def _sse(*docs: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(d) + b"\n\n" for d in docs) + b": a comment\n\ndata: [DONE]\n\n"


def test_chat_events_add_up_to_one_message() -> None:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    raw = _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
               {**head, "choices": [{"index": 0, "delta": {"reasoning": "hmm "}, "finish_reason": None}]},
               {**head, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
               {**head, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop", "stop_reason": 42}]},
               {**head, "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3},
                "system_fingerprint": "vllm-x"})
    # a vLLM pool (its fingerprint says so): every field of vLLM's own non-stream answer, nulls included
    assert assemble(raw, "chat") == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello", "reasoning": "hmm ",
                                             "refusal": None, "annotations": None, "audio": None,
                                             "function_call": None},
                     "logprobs": None, "finish_reason": "stop", "stop_reason": 42, "token_ids": None,
                     "routed_experts": None}],
        "usage": {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3, "prompt_tokens_details": None,
                  "completion_tokens_details": None},
        "system_fingerprint": "vllm-x", "service_tier": None, "prompt_logprobs": None, "prompt_token_ids": None,
        "prompt_text": None, "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}


def test_completion_events_add_up_to_one_text() -> None:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}
    raw = _sse({**head, "choices": [{"index": 0, "text": "", "finish_reason": None}]},
               {**head, "choices": [{"index": 0, "text": "a b", "finish_reason": None}]},
               {**head, "choices": [{"index": 0, "text": " c", "finish_reason": "length", "stop_reason": None}]})
    doc = assemble(raw, "completions")
    assert doc is not None and doc["object"] == "text_completion" and doc["usage"] is None
    assert doc["choices"] == [{"index": 0, "text": "a b c", "logprobs": None, "finish_reason": "length",
                               "stop_reason": None}]
    assert assemble(b"data: [DONE]\n\n", "completions") is None


async def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str], float]:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body, headers={"X-Forwarded-For": LONDON}) as r:
        return r.status, await r.json(), dict(r.headers), time.monotonic() - t0


@pytest.mark.parametrize("body", [CHAT, PROMPT], ids=["chat", "completions"])
async def test_assembled_answer_is_the_pools_own_answer(sim_factory, gateway_factory, body: dict[str, Any]) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    status, got, headers, _ = await _post(gw.url, body)
    _, direct, _, _ = await _post(sim.url, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["x-infercdn-attempts"] == "1"
    assert (got["object"], got["model"]) == (direct["object"], direct["model"])
    def text(doc: dict[str, Any]) -> str:
        choice = doc["choices"][0]
        return choice["message"]["content"] if "messages" in body else choice["text"]
    assert text(got) == text(direct) and text(got)
    assert got["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"] == "length"
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [got["usage"][k] for k in counts] == [direct["usage"][k] for k in counts]
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        metrics = await r.text()
    assert 'infercdn_request_duration_seconds_count{model="tiny-chat",stream="false"} 1.0' in metrics
    assert 'infercdn_tokens_total{kind="completion",model="tiny-chat"} 12.0' in metrics


@pytest.mark.parametrize(("non_stream", "extra", "region"), [
    ("stream", {}, "us-east"),  # no first token in 0.3 s: the next region answers (well before 1.5 s)
    ("passthrough", {}, "eu-west"),  # the pool's JSON awaited as it is: the slow region answers
    ("stream", {"logprobs": True, "top_logprobs": 1}, "eu-west"),  # an answer of its own shape: relayed
])
async def test_slow_pool_and_the_first_token_deadline(sim_factory, gateway_factory, non_stream: str,
                                                      extra: dict[str, Any], region: str) -> None:
    eu = await sim_factory(fault="slow_first_token:seconds=1.5")
    us = await sim_factory()
    models = {"*": {"ttft_deadline_s": 0.3, "non_stream": non_stream}}
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}, models=models))
    status, got, headers, wall = await _post(gw.url, {**CHAT, **extra})
    assert status == 200 and got["choices"][0]["message"]["content"]
    assert headers["x-infercdn-region"] == region
    if region == "us-east":
        assert headers["x-infercdn-attempts"] == "2" and wall < 1.5
        await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)  # the slow attempt was dropped upstream
    else:
        assert headers["x-infercdn-attempts"] == "1" and wall >= 1.5


async def test_answer_that_cannot_be_completed_is_a_503(sim_factory, gateway_factory) -> None:
    sim = await sim_factory(fault="cut_after:tokens=5")
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    status, got, headers, _ = await _post(gw.url, CHAT)
    assert status == 503 and headers["x-infercdn-region"] == "eu-west"
    assert got["error"]["code"] == "no_healthy_upstream"
    assert got["error"]["message"].startswith("the answer was cut after 5 token(s) and could not be resumed")


async def test_hedged_non_stream_request(sim_factory, gateway_factory) -> None:
    """Hedging applies to non-stream requests too (they race for a first token like streams):
    the hedge answers, the slow attempt is cancelled upstream, no keep-alive reaches the JSON."""
    eu = await sim_factory(fault="slow_first_token:seconds=2")
    us = await sim_factory()
    models = {"*": {"ttft_deadline_s": 5, "hedge": {"enabled": True, "after_ms": 50}}}
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]},
                                           gateway={"keepalive_comment_s": 0.01}, models=models))
    status, got, headers, wall = await _post(gw.url, CHAT)
    assert status == 200 and got["object"] == "chat.completion" and got["choices"][0]["message"]["content"]
    assert (headers["x-infercdn-region"], headers["x-infercdn-attempts"]) == ("us-east", "2")
    assert wall < 1.5
    await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)


async def test_fallback_model_answers_a_non_stream_request(sim_factory, gateway_factory) -> None:
    """When every pool of the model fails, the configured fallback answers, named as such."""
    dead = await sim_factory(fault="503:health=0")
    other = await sim_factory(model="other-model")
    data = base_config({"eu-west": [dead.url]}, models={"tiny-chat": {"fallbacks": ["other-model"]}})
    data["pools"].append({"name": "other-pool", "region": "us-east", "models": ["other-model"],
                          "endpoints": [{"id": "other-0", "url": other.url}]})
    gw = await gateway_factory(data)
    status, got, headers, _ = await _post(gw.url, CHAT)
    assert status == 200 and got["model"] == "other-model" == headers["x-infercdn-model"]
    assert got["choices"][0]["message"]["content"] and got["usage"]["completion_tokens"] == 12


def test_the_events_are_read_as_one_array_yet_each_on_its_own_terms() -> None:
    """One parse of all the events gives what a parse per event gives: a malformed event, one
    holding two values or a non-object is dropped, [DONE] is no document."""
    good = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert _documents(good) == _documents(good[:-14]) == [{"a": 1}, {"b": 2}]
    for bad in (b'data: {"x": \n\n', b'data: {"x": 1},{"y": 2}\n\n', b"data: 7\n\n", b"data: \n\n", b": hi\n\n",
                b"data: [DONE]\n\n"):
        assert _documents(b'data: {"a": 1}\n\n' + bad + b'data: {"b": 2}\n\n') == [{"a": 1}, {"b": 2}], bad
    named = b'data: {"a": 1}\n\nevent: x\ndata: {"x": 1}\n\n'
    # a cut inside an event's JSON (whitespace) or between two values, braces in strings
    for raw in (b'data: {"a": 1},\n\n{"b": 2}\n\n',
                b'data: {"a":\n\n1}\n\ndata: {"b": 2}\n\n', b'data: {"a": "}"}\n\ndata: {"b": "\\n"}\n\n'):
        assert _documents(raw) == [d for d in map(parse_event, events(raw)) if d is not None], raw
    assert _documents(named) == [d for d in map(parse_event, events(named)) if d is not None] == [{"a": 1}, {"x": 1}]
