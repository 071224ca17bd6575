"""The simulator speaks vLLM's OpenAI API: shapes, usage, token ids, errors, metrics."""
from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from worker.sim import Simulator
from worker.sim.testing import parse_sse, running_sim, stream_text, stream_token_ids

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Hello there"}],
        "temperature": 0, "max_tokens": 6}
COMPLETION = {"model": "tiny-chat", "prompt": "the world was new", "temperature": 0, "max_tokens": 6}


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(url, json=body) as resp:
        raw = await resp.read()
    ctype = resp.headers.get("Content-Type", "")
    if ctype.startswith("text/event-stream"):
        return resp.status, parse_sse(raw), resp
    return resp.status, (await _json(raw)), resp


async def _json(raw: bytes) -> Any:
    import orjson
    return orjson.loads(raw) if raw else None


async def test_chat_stream_shape(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, (events, done), resp = await post(http, f"{sim.url}/v1/chat/completions", {**CHAT, "stream": True})
    assert status == 200 and done
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    first, *content = events
    assert first["object"] == "chat.completion.chunk" and first["model"] == "tiny-chat"
    assert first["id"].startswith("chatcmpl-")
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}]
    assert len(content) == 6 and all(e["id"] == first["id"] for e in content)
    assert [e["choices"][0]["finish_reason"] for e in content] == [None] * 5 + ["length"]
    assert "usage" not in content[-1] and content[0]["choices"][0]["token_ids"] is None  # null, as vLLM 0.32 sends


async def test_completion_stream_with_usage_and_token_ids(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {**COMPLETION, "stream": True, "return_token_ids": True, "stream_options": {"include_usage": True}}
    status, (events, done), _ = await post(http, f"{sim.url}/v1/completions", body)
    assert status == 200 and done
    *content, last = events
    assert all(e["object"] == "text_completion" for e in events)
    assert content[0]["choices"][0]["prompt_token_ids"] == sim.core.tokenizer.encode("the world was new")
    assert content[1]["choices"][0]["prompt_token_ids"] is None  # only the first chunk carries them
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 4, "total_tokens": 10, "completion_tokens": 6}
    ids = stream_token_ids(content)
    assert len(ids) == 6 and sim.core.tokenizer.decode(ids) == stream_text(content)


async def test_chat_return_token_ids_puts_prompt_ids_on_the_first_chunk(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {**CHAT, "stream": True, "return_token_ids": True}
    _, (events, _), _ = await post(http, f"{sim.url}/v1/chat/completions", body)
    tok = sim.core.tokenizer
    assert events[0]["prompt_token_ids"] == tok.encode(
        "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")
    assert all(len(e["choices"][0]["token_ids"]) == 1 for e in events[1:])


async def test_non_stream_bodies_match_the_stream(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, (events, _), _ = await post(http, f"{sim.url}/v1/chat/completions", {**CHAT, "stream": True})
    status, body, _ = await post(http, f"{sim.url}/v1/chat/completions", {**CHAT, "return_token_ids": True})
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == stream_text(events)
    assert choice["finish_reason"] == "length" and len(choice["token_ids"]) == 6
    assert body["usage"]["completion_tokens"] == 6 and body["prompt_token_ids"]
    status, body, _ = await post(http, f"{sim.url}/v1/completions", COMPLETION)
    assert status == 200 and body["object"] == "text_completion" and body["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == 4 and body["usage"]["total_tokens"] == 10


async def test_tokens_per_chunk_groups_tokens() -> None:
    async with running_sim(ttft_ms=0, itl_ms=0, tokens_per_chunk=4) as sim, aiohttp.ClientSession() as http:
        body = {**COMPLETION, "max_tokens": 10, "stream": True, "return_token_ids": True}
        _, (events, _), _ = await post(http, f"{sim.url}/v1/completions", body)
    assert [len(e["choices"][0]["token_ids"]) for e in events] == [4, 4, 2]


async def test_default_max_tokens_and_stop(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {k: v for k, v in COMPLETION.items() if k != "max_tokens"}
    _, full, _ = await post(http, f"{sim.url}/v1/completions", body)
    assert full["usage"]["completion_tokens"] == 16
    text = full["choices"][0]["text"]
    stop = text.split()[3]
    _, stopped, _ = await post(http, f"{sim.url}/v1/completions", {**body, "stop": [stop]})
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]


@pytest.mark.parametrize("path,body,status,etype,needle", [
    ("/v1/chat/completions", {**CHAT, "model": "nope"}, 404, "NotFoundError", "`nope` does not exist"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 5000}, 400, "BadRequestError", "maximum context length"),
    ("/v1/completions", {**COMPLETION, "prompt": "word " * 2100}, 400, "BadRequestError", "maximum context length"),
    ("/v1/completions", {**COMPLETION, "prompt": [100] * 2048}, 400, "BadRequestError", "max_tokens must be at least 1"),
    ("/v1/completions", {**COMPLETION, "max_tokens": -1, "stream": True}, 400, "BadRequestError", "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "BadRequestError", "messages"),
    ("/v1/completions", {**COMPLETION, "stream_options": {"include_usage": True}}, 400, "BadRequestError", "stream=True"),
    ("/v1/completions", {**COMPLETION, "prompt": [1, 10**9]}, 400, "BadRequestError", "vocabulary"),
    ("/v1/chat/completions", {**CHAT, "continue_final_message": True}, 400, "BadRequestError", "Cannot set both"),
])
async def test_errors_in_vllm_format(sim: Simulator, http: aiohttp.ClientSession, path: str,
                                     body: dict[str, Any], status: int, etype: str, needle: str) -> None:
    got, payload, resp = await post(http, sim.url + path, body)
    assert (got, resp.headers["Content-Type"]) == (status, "application/json")
    error = payload["error"]
    assert error["type"] == etype and error["code"] == status and needle in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_bad_json_is_a_plain_400(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/v1/chat/completions", data=b'{"stream": true, ') as resp:
        assert resp.status == 400 and resp.content_type == "application/json"
        assert (await resp.json())["error"]["type"] == "BadRequestError"


async def test_service_endpoints(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/health") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.get(f"{sim.url}/ping") as resp:
        assert resp.status == 200
    async with http.get(f"{sim.url}/version") as resp:
        assert "version" in await resp.json()
    async with http.get(f"{sim.url}/v1/models") as resp:
        models = await resp.json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny-chat"]
    assert sim.stats.paths["/health"] == 1 and sim.stats.paths["/v1/models"] == 1


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


async def test_metrics_use_vllm_names_and_move(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/metrics") as resp:
        before = await resp.text()
    assert resp.content_type == "text/plain"
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        assert sample(before, name, model_name="tiny-chat") == 0.0
    long_prompt = {**COMPLETION, "prompt": " ".join(["the world"] * 20)}
    await post(http, f"{sim.url}/v1/completions", long_prompt)
    await post(http, f"{sim.url}/v1/completions", long_prompt)
    async with http.get(f"{sim.url}/metrics") as resp:
        after = await resp.text()
    assert sample(after, "vllm:prompt_tokens_total") == 80.0
    assert sample(after, "vllm:generation_tokens_total") == 12.0
    assert sample(after, "vllm:request_success_total", finished_reason="length") == 2.0
    assert sample(after, "vllm:prefix_cache_hits_total") == 32.0
    assert sample(after, "vllm:time_to_first_token_seconds_count") == 2.0
    assert sample(after, "vllm:e2e_request_latency_seconds_bucket", le="+Inf") == 2.0
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in after
