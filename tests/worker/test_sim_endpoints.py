"""/v1/responses, /tokenize, /detokenize, vLLM's 404/405 answers, and faults and scheduling with
multi-choice requests on the simulator."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from worker.sim import Simulator
from worker.sim.testing import choice_token_ids, parse_sse, parse_typed_sse, read_stalled, running_sim

MSGS = [{"role": "user", "content": "Hello there"}]
N2 = {"model": "tiny-chat", "prompt": ["one", "two"], "n": 2, "temperature": 1.0, "seed": 1,
      "max_tokens": 5, "stream": True, "return_token_ids": True}


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.read()


async def test_responses_non_stream_is_the_chat_answer(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, sim.url + "/v1/chat/completions",
                        {"messages": MSGS, "temperature": 0, "max_tokens": 6})
    chat = orjson.loads(raw)
    status, raw = await post(http, sim.url + "/v1/responses",
                             {"model": "tiny-chat", "input": "Hello there", "temperature": 0, "max_output_tokens": 6})
    resp = orjson.loads(raw)
    assert status == 200 and resp["object"] == "response" and resp["id"].startswith("resp_")
    [item] = resp["output"]
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    assert item["content"][0]["text"] == chat["choices"][0]["message"]["content"]
    assert (resp["status"], resp["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    usage = resp["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (chat["usage"]["prompt_tokens"], 6)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_responses_instructions_and_message_list(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "tiny-chat", "instructions": "Be brief.", "temperature": 0, "max_output_tokens": 3,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}]}
    resp = orjson.loads((await post(http, sim.url + "/v1/responses", body))[1])
    _, raw = await post(http, sim.url + "/tokenize",
                        {"messages": [{"role": "system", "content": "Be brief."}, *MSGS]})
    assert resp["instructions"] == "Be brief." and resp["usage"]["input_tokens"] == orjson.loads(raw)["count"]


async def test_responses_stream_events(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "tiny-chat", "input": "Hello there", "temperature": 0, "max_output_tokens": 5}
    whole = orjson.loads((await post(http, sim.url + "/v1/responses", body))[1])
    status, raw = await post(http, sim.url + "/v1/responses", {**body, "stream": True})
    events = parse_typed_sse(raw)
    names = [name for name, _ in events]
    assert status == 200 and b"[DONE]" not in raw
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 5 + [
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert text == whole["output"][0]["content"][0]["text"] == events[-4][1]["text"]
    final = events[-1][1]["response"]
    assert final["output"] == [{**whole["output"][0], "id": final["output"][0]["id"]}]
    assert final["usage"] == whole["usage"]


async def test_responses_stream_cut_after(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("cut_after:tokens=2")
    body = {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 8, "stream": True}
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, sim.url + "/v1/responses", body)
    assert sim.stats.tokens_sent == 2 and sim.stats.faults["cut_after"] == 1


async def test_responses_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, sim.url + "/v1/responses", {"model": "nope", "input": "x"})
    assert status == 404 and orjson.loads(raw)["error"]["type"] == "NotFoundError"
    status, raw = await post(http, sim.url + "/v1/responses", {"model": "tiny-chat", "input": 3})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "input"


async def test_tokenize_and_detokenize(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, sim.url + "/tokenize", {"model": "tiny-chat", "prompt": "Hello there world",
                                                           "return_token_strs": True})
    answer = orjson.loads(raw)
    ids = sim.tokenizer.encode("Hello there world")
    assert status == 200 and answer == {"count": len(ids), "max_model_len": 2048, "tokens": ids,
                                        "token_strs": [sim.tokenizer.texts[t] for t in ids]}
    status, raw = await post(http, sim.url + "/detokenize", {"model": "tiny-chat", "tokens": ids})
    assert status == 200 and orjson.loads(raw) == {"prompt": "Hello there world"}
    _, raw = await post(http, sim.url + "/tokenize", {"messages": MSGS, "add_generation_prompt": False})
    assert orjson.loads(raw)["tokens"] == sim.tokenizer.encode("<|im_start|>user\nHello there<|im_end|>\n")
    status, raw = await post(http, sim.url + "/detokenize", {"tokens": "abc"})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "tokens"
    status, raw = await post(http, sim.url + "/tokenize", {"model": "nope", "prompt": "x"})
    assert status == 404


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/v1/models/tiny-chat", 404, None), ("POST", "/v1/embeddings", 404, None),
    ("GET", "/tokenize", 405, "POST"), ("POST", "/v1/models", 405, "GET"),
    ("GET", "/v1/chat/completions", 405, "POST"),
])
async def test_unknown_paths_and_methods_answer_like_fastapi(sim: Simulator, http: aiohttp.ClientSession,
                                                             method: str, path: str, status: int,
                                                             allow: str | None) -> None:
    async with http.request(method, sim.url + path) as resp:
        assert resp.status == status and resp.headers.get("Allow") == allow
        detail = "Not Found" if status == 404 else "Method Not Allowed"
        assert await resp.json() == {"detail": detail}


@pytest.mark.parametrize("tokens", [1, 3, 6])
async def test_cut_after_counts_the_tokens_of_all_choices(http: aiohttp.ClientSession, tokens: int) -> None:
    async with running_sim(ttft_ms=0, itl_ms=0, fault=f"cut_after:tokens={tokens}") as sim:
        async with http.post(sim.url + "/v1/completions", json=N2) as resp:
            got = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    got += line
        events, done = parse_sse(got)
        assert not done and sum(len(v) for v in choice_token_ids(events).values()) == tokens
        assert sim.stats.tokens_sent == tokens and sim.stats.requests_failed == 1
        assert [e["choices"][0]["index"] for e in events] == [i % 4 for i in range(tokens)]


async def test_stall_no_done_and_malformed_with_several_choices(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("no_done")
    status, raw = await post(http, sim.url + "/v1/completions", N2)
    events, done = parse_sse(raw)
    assert status == 200 and not done and sum(len(v) for v in choice_token_ids(events).values()) == 20
    sim.set_fault("malformed_event:at=5")
    _, raw = await post(http, sim.url + "/v1/completions", N2)
    with pytest.raises(ValueError):
        parse_sse(raw)
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b'"malformed"') == 1
    sim.set_fault("stall_after:tokens=3")
    resp = await http.post(sim.url + "/v1/completions", json=N2)
    await sim.wait_for(lambda s: s.tokens_sent == 20 + 20 + 3)
    assert len(await read_stalled(resp, 3)) == 3
    resp.close()
    await sim.wait_for(lambda s: s.requests_cancelled == 1 and s.running == 0)


async def test_a_request_holds_one_slot_per_choice(http: aiohttp.ClientSession) -> None:
    async with running_sim(ttft_ms=60_000, max_num_seqs=4) as sim:
        first = asyncio.ensure_future(post(http, sim.url + "/v1/completions", {**N2, "n": 3, "prompt": "x"}))
        await sim.wait_for(lambda s: s.running == 3)
        second = asyncio.ensure_future(post(http, sim.url + "/v1/completions", {**N2, "prompt": "x"}))
        await sim.wait_for(lambda s: s.waiting == 2)  # needs 2 slots, 1 is free: it waits whole
        big = asyncio.ensure_future(post(http, sim.url + "/v1/completions", {**N2, "n": 9, "prompt": "x"}))
        await sim.wait_for(lambda s: s.waiting == 2 + 4)  # more choices than slots: takes them all
        for task in (first, second, big):
            task.cancel()
        await sim.wait_for(lambda s: s.running == 0 and s.waiting == 0 and s.requests_cancelled == 3)


@pytest.mark.parametrize(("extra", "message"), [
    ({"prompt": [10 ** 6]}, "Token id 1000000 is out of vocabulary"),
    ({"prompt": ["ok", ""]}, "The decoder prompt cannot be empty"),
    ({"logprobs": 21}, "Requested sample logprobs of 21"),
])
async def test_engine_errors_reach_a_stream_as_an_error_event(sim: Simulator, http: aiohttp.ClientSession,
                                                              extra: dict[str, Any], message: str) -> None:
    """As vLLM 0.32: status 200, one error event, [DONE] (a non-stream request gets a 400)."""
    body = {"model": "tiny-chat", "prompt": "hi", "max_tokens": 4, **extra}
    status, raw = await post(http, sim.url + "/v1/completions", {**body, "stream": True})
    events, done = parse_sse(raw)
    assert status == 200 and done and len(events) == 1
    assert events[0]["error"]["message"].startswith(message) and events[0]["error"]["code"] == 400
    status, raw = await post(http, sim.url + "/v1/completions", body)
    assert status == 400 and orjson.loads(raw)["error"]["message"].startswith(message)
