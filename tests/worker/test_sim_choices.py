"""Answers with several choices (n > 1, lists of prompts), echo and logprobs on the simulator."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from worker.sim import Simulator
from worker.sim.testing import choice_texts, choice_token_ids, parse_sse, stream_text, stream_token_ids

SEEDED = {"model": "tiny-chat", "temperature": 1.0, "seed": 7, "max_tokens": 6}
PROMPTS = ["Once upon a time", "Hello there", "the river"]


async def post(sim: Simulator, path: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(sim.url + path, json=body) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
    return parse_sse(raw) if body.get("stream") else orjson.loads(raw)


async def test_list_prompts_times_n_number_choices_prompt_major(sim: Simulator) -> None:
    body = {**SEEDED, "prompt": PROMPTS, "n": 2, "return_token_ids": True}
    answer = await post(sim, "/v1/completions", body)
    tok = sim.tokenizer
    assert [c["index"] for c in answer["choices"]] == list(range(6))
    assert [c["prompt_token_ids"] for c in answer["choices"]] == [tok.encode(p) for p in PROMPTS for _ in "ab"]
    assert all(c["finish_reason"] == "length" and len(c["token_ids"]) == 6 for c in answer["choices"])
    prompt_tokens = sum(len(tok.encode(p)) for p in PROMPTS)  # each prompt once, whatever n
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 36,
                               "total_tokens": prompt_tokens + 36,
                               "prompt_tokens_details": None, "completion_tokens_details": None}


async def test_stream_interleaves_choices_and_matches_the_non_stream_answer(sim: Simulator) -> None:
    body = {**SEEDED, "prompt": PROMPTS[:2], "n": 2, "return_token_ids": True}
    whole = await post(sim, "/v1/completions", body)
    events, done = await post(sim, "/v1/completions", {**body, "stream": True,
                                                      "stream_options": {"include_usage": True}})
    assert done
    *chunks, usage = events
    assert [e["choices"][0]["index"] for e in chunks[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(len(e["choices"]) == 1 for e in chunks)
    assert choice_texts(chunks) == {c["index"]: c["text"] for c in whole["choices"]}
    assert choice_token_ids(chunks) == {c["index"]: c["token_ids"] for c in whole["choices"]}
    assert usage["choices"] == [] and usage["usage"] == {k: whole["usage"][k] for k in usage["usage"]}
    finishes = [e["choices"][0]["index"] for e in chunks if e["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1, 2, 3]


async def test_sample_i_is_the_n1_answer_seeded_seed_plus_i(sim: Simulator) -> None:
    """As vLLM (seen on 0.32: choice 1 of n=2 with seed 7 is the n=1 answer with seed 8)."""
    one = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[0]})
    next_seed = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[0], "seed": 8})
    two = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[0], "n": 2})
    assert [c["text"] for c in two["choices"]] == [one["choices"][0]["text"], next_seed["choices"][0]["text"]]
    assert two["choices"][1]["text"] != two["choices"][0]["text"]
    again = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[0], "n": 2})
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in two["choices"]]  # seeded: reproducible


async def test_chat_n2_stream_opens_with_a_role_chunk_per_choice(sim: Simulator) -> None:
    body = {**SEEDED, "messages": [{"role": "user", "content": "Hello there"}], "n": 3, "stream": True}
    events, done = await post(sim, "/v1/chat/completions", body)
    assert done
    assert [(e["choices"][0]["index"], e["choices"][0]["delta"]) for e in events[:3]] == [
        (i, {"role": "assistant", "content": ""}) for i in range(3)]
    whole = await post(sim, "/v1/chat/completions", {**body, "stream": False})
    assert choice_texts(events) == {c["index"]: c["message"]["content"] for c in whole["choices"]}
    assert whole["usage"]["completion_tokens"] == 18


async def test_stop_string_finishes_each_choice_on_its_own(sim: Simulator) -> None:
    body = {**SEEDED, "prompt": PROMPTS[0], "n": 4, "max_tokens": 40, "stop": ["."]}
    answer = await post(sim, "/v1/completions", body)
    for c in answer["choices"]:
        assert "." not in c["text"]
        assert (c["finish_reason"], c["stop_reason"]) in {("stop", "."), ("length", None)}
    reasons = [c["finish_reason"] for c in answer["choices"]]
    assert "stop" in reasons  # seeded: the same every run
    lengths = [len(sim.tokenizer.encode(c["text"])) for c in answer["choices"]]
    assert all(n < 40 for n, r in zip(lengths, reasons, strict=True) if r == "stop")


async def test_echo_prefixes_the_prompt_text(sim: Simulator) -> None:
    plain = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[1]})
    echoed = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[1], "echo": True})
    assert echoed["choices"][0]["text"] == PROMPTS[1] + plain["choices"][0]["text"]
    events, _ = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[1], "echo": True, "stream": True})
    assert stream_text(events) == echoed["choices"][0]["text"]
    assert events[0]["choices"][0]["prompt_token_ids"] == sim.tokenizer.encode(PROMPTS[1])  # as vLLM, unasked
    ids = sim.tokenizer.encode("the river")
    by_ids = await post(sim, "/v1/completions", {**SEEDED, "prompt": ids, "echo": True})
    assert by_ids["choices"][0]["text"].startswith("the river")


async def test_completion_logprobs_are_consistent(sim: Simulator) -> None:
    body = {**SEEDED, "prompt": PROMPTS[0], "logprobs": 3, "return_token_ids": True}
    answer = await post(sim, "/v1/completions", body)
    choice = answer["choices"][0]
    lp = choice["logprobs"]
    texts = sim.tokenizer.texts
    assert lp["tokens"] == [texts[t] for t in choice["token_ids"]]
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert len(top) == 3 and top[token] == value == max(top.values()) and value < 0
    events, _ = await post(sim, "/v1/completions", {**body, "stream": True})
    streamed = [e["choices"][0]["logprobs"] for e in events]
    assert sum((s["token_logprobs"] for s in streamed), []) == lp["token_logprobs"]
    assert sum((s["text_offset"] for s in streamed), []) == lp["text_offset"]


async def test_echo_logprobs_start_with_null_and_rank_prompt_tokens(sim: Simulator) -> None:
    answer = await post(sim, "/v1/completions", {**SEEDED, "prompt": "the river", "echo": True, "logprobs": 1})
    choice = answer["choices"][0]
    lp, n_prompt = choice["logprobs"], len(sim.tokenizer.encode("the river"))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == choice["text"]
    prompt_lp = choice["prompt_logprobs"]
    assert len(prompt_lp) == n_prompt and prompt_lp[0] is None
    for entry, top in zip(prompt_lp[1:], lp["top_logprobs"][1:n_prompt], strict=True):
        assert len(entry) == 2 and {e["rank"] for e in entry.values()} >= {1}
        assert {e["decoded_token"]: e["logprob"] for e in entry.values()} == top  # prompt token + top 1


async def test_chat_logprobs_shape(sim: Simulator) -> None:
    body = {**SEEDED, "messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 2}
    answer = await post(sim, "/v1/chat/completions", body)
    content = answer["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == answer["choices"][0]["message"]["content"]
    for c in content:
        assert c["bytes"] == list(c["token"].encode()) and len(c["top_logprobs"]) == 2
        assert c["top_logprobs"][0]["token"] == c["token"] and c["top_logprobs"][0]["logprob"] == c["logprob"]
    bare = await post(sim, "/v1/chat/completions", {**body, "top_logprobs": None})
    assert all(c["top_logprobs"] == [] for c in bare["choices"][0]["logprobs"]["content"])


async def test_logprobs_of_a_resumed_generation_match_the_uninterrupted_one(sim: Simulator) -> None:
    body = {"model": "tiny-chat", "prompt": PROMPTS[0], "temperature": 0, "max_tokens": 8, "logprobs": 2,
            "return_token_ids": True}
    whole = (await post(sim, "/v1/completions", body))["choices"][0]
    head = whole["token_ids"][:3]
    tail_body = {**body, "prompt": sim.tokenizer.encode(PROMPTS[0]) + head, "max_tokens": 5}
    tail = (await post(sim, "/v1/completions", tail_body))["choices"][0]
    assert tail["token_ids"] == whole["token_ids"][3:]
    assert tail["logprobs"]["token_logprobs"] == whole["logprobs"]["token_logprobs"][3:]
    assert tail["logprobs"]["top_logprobs"] == whole["logprobs"]["top_logprobs"][3:]


@pytest.mark.parametrize(("body", "message"), [
    ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling, got 2."),
    ({"n": 0}, "n must be at least 1, got 0."),
    ({"logprobs": 21}, "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"prompt": ["ok", ""]}, "The decoder prompt cannot be empty"),
    ({"prompt": [[1, 10 ** 6]]}, "Token id 1000000 is out of vocabulary"),
])
async def test_bad_choice_parameters_are_400(sim: Simulator, body: dict[str, Any], message: str) -> None:
    async with aiohttp.ClientSession() as http, \
            http.post(sim.url + "/v1/completions", json={**SEEDED, "prompt": "x", **body}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"].startswith(message)


async def test_top_logprobs_needs_logprobs_on_chat(sim: Simulator) -> None:
    body = {**SEEDED, "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}
    async with aiohttp.ClientSession() as http, http.post(sim.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "top_logprobs"


async def test_stream_token_helpers_still_work_for_one_choice(sim: Simulator) -> None:
    events, _ = await post(sim, "/v1/completions", {**SEEDED, "prompt": "x", "stream": True,
                                                   "return_token_ids": True})
    assert sim.tokenizer.decode(stream_token_ids(events)) == stream_text(events)


async def test_return_token_ids_drops_the_echo_as_vllm_does(sim: Simulator) -> None:
    """vLLM 0.32 (recorded in fixtures/vllm/completion_echo_return_token_ids*.json)."""
    body = {**SEEDED, "prompt": PROMPTS[1], "echo": True, "return_token_ids": True}
    plain = await post(sim, "/v1/completions", {**SEEDED, "prompt": PROMPTS[1]})
    answer = await post(sim, "/v1/completions", body)
    assert answer["choices"][0]["text"] == plain["choices"][0]["text"]
    events, _ = await post(sim, "/v1/completions", {**body, "stream": True})
    assert stream_text(events) == plain["choices"][0]["text"]
