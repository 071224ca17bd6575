"""Real vLLM (CPU, tiny model) under ``infercdn worker vllm``: the launcher's promises, and the
engine facts the gateway relies on.  One server for the run; the destructive tests come last."""
from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import aiohttp
import pytest

from worker.vllm.command import requests_in_flight

from tests.vllm_fixture import (SECOND_NAME, SERVED_NAME, VllmServer, http_get, unavailable_reason,
                                vllm_live, vllm_server)

__all__ = ["vllm_live", "vllm_server"]  # fixtures, imported for pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.timeout(300),
    pytest.mark.skipif(unavailable_reason() is not None and os.environ.get("INFERCDN_REQUIRE_VLLM") != "1",
                       reason=unavailable_reason() or ""),
]

CHAT = [{"role": "user", "content": "Write a function that adds two numbers."}]


async def stream(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming request; the parsed events, asserting the SSE framing ends with [DONE]."""
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.post(url + path, json={**body, "stream": True}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    for frame in frames[:-1]:
        assert frame.startswith("data: ")
        events.append(json.loads(frame[len("data: "):]))
    return events


def generated(events: list[dict[str, Any]], chat: bool) -> tuple[str, list[int]]:
    text, ids = "", []
    for event in events:
        for choice in event["choices"]:
            text += (choice["delta"].get("content") or "") if chat else choice["text"]
            ids += choice.get("token_ids") or []
    return text, ids


def test_launcher_brings_vllm_up(vllm_server: VllmServer) -> None:
    assert http_get(vllm_server.url + "/health") == (200, b"")
    assert http_get(vllm_server.control_url + "/health")[0] == 200
    status = vllm_server.status()
    assert status and status["state"] == "ready" and isinstance(status["pid"], int)


def test_models_lists_served_name(vllm_server: VllmServer) -> None:
    code, body = http_get(vllm_server.url + "/v1/models")
    assert code == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [SERVED_NAME, SECOND_NAME]


async def test_chat_stream_is_deterministic_at_temperature_0(vllm_server: VllmServer) -> None:
    body = {"model": SERVED_NAME, "messages": CHAT, "max_tokens": 24, "temperature": 0,
            "return_token_ids": True}
    first, second = [await stream(vllm_server.url, "/v1/chat/completions", body) for _ in range(2)]
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert generated(first, chat=True) == generated(second, chat=True)
    assert len(generated(first, chat=True)[1]) == 24


async def test_return_token_ids_stream_shape(vllm_server: VllmServer) -> None:
    body = {"model": SERVED_NAME, "max_tokens": 8, "temperature": 0, "return_token_ids": True,
            "stream_options": {"include_usage": True}}
    chat = await stream(vllm_server.url, "/v1/chat/completions", {**body, "messages": CHAT})
    # chat: prompt ids at the top level of the first (role) chunk, after the chat template
    assert isinstance(chat[0]["prompt_token_ids"], list) and chat[0]["prompt_token_ids"]
    assert "token_ids" not in chat[0]["choices"][0]
    assert all("prompt_token_ids" not in e for e in chat[1:])
    usage = chat[-1]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == len(chat[0]["prompt_token_ids"])
    assert len(generated(chat, chat=True)[1]) == usage["usage"]["completion_tokens"] == 8

    comp = await stream(vllm_server.url, "/v1/completions", {**body, "prompt": "def add(a, b):"})
    # completions: prompt ids inside the first chunk's choice, null afterwards
    assert isinstance(comp[0]["choices"][0]["prompt_token_ids"], list)
    assert all(e["choices"][0]["prompt_token_ids"] is None for e in comp[1:] if e["choices"])
    assert len(generated(comp, chat=False)[1]) == comp[-1]["usage"]["completion_tokens"] == 8


async def test_resume_with_prompt_token_ids_is_exact(vllm_server: VllmServer) -> None:
    body = {"model": SERVED_NAME, "prompt": "import os\n", "temperature": 0, "return_token_ids": True}
    full = await stream(vllm_server.url, "/v1/completions", {**body, "max_tokens": 12})
    head = await stream(vllm_server.url, "/v1/completions", {**body, "max_tokens": 6})
    prompt_ids = full[0]["choices"][0]["prompt_token_ids"]
    head_text, head_ids = generated(head, chat=False)
    tail = await stream(vllm_server.url, "/v1/completions",
                        {**body, "prompt": prompt_ids + head_ids, "max_tokens": 6})
    tail_text, tail_ids = generated(tail, chat=False)
    assert (head_text + tail_text, head_ids + tail_ids) == generated(full, chat=False)


async def test_continue_final_message_resumes_chat(vllm_server: VllmServer) -> None:
    body = {"model": SERVED_NAME, "messages": CHAT, "temperature": 0}
    full, _ = generated(await stream(vllm_server.url, "/v1/chat/completions",
                                     {**body, "max_tokens": 12}), chat=True)
    head, _ = generated(await stream(vllm_server.url, "/v1/chat/completions",
                                     {**body, "max_tokens": 6}), chat=True)
    resumed = {**body, "max_tokens": 6, "continue_final_message": True, "add_generation_prompt": False,
               "messages": CHAT + [{"role": "assistant", "content": head}]}
    tail, _ = generated(await stream(vllm_server.url, "/v1/chat/completions", resumed), chat=True)
    assert head + tail == full


async def test_errors_are_openai_format(vllm_server: VllmServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(vllm_server.url + "/v1/chat/completions",
                             json={"model": "nope", "messages": CHAT, "stream": True}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == 404
        too_long = {"model": SERVED_NAME, "prompt": "x " * 5000, "max_tokens": 4, "stream": True}
        async with http.post(vllm_server.url + "/v1/completions", json=too_long) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["type"] == "BadRequestError" and "maximum context length" in error["message"]


METRICS = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
           "cache_config_info", "prompt_tokens_total", "generation_tokens_total",
           "request_success_total", "num_preemptions_total", "prefix_cache_queries_total",
           "prefix_cache_hits_total", "time_to_first_token_seconds_bucket",
           "inter_token_latency_seconds_bucket", "e2e_request_latency_seconds_bucket",
           "request_queue_time_seconds_bucket", "request_prefill_time_seconds_bucket",
           "request_decode_time_seconds_bucket")


def test_metric_names_present(vllm_server: VllmServer) -> None:
    code, body = http_get(vllm_server.url + "/metrics")
    names = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
             if line.startswith("vllm:")}
    assert {f"vllm:{m}" for m in METRICS} <= names


# --- destructive: keep these last -------------------------------------------------------------

def test_killed_vllm_is_restarted(vllm_live: VllmServer) -> None:
    before = vllm_live.status()
    assert before and isinstance(before["pid"], int)
    os.kill(before["pid"], signal.SIGKILL)
    after = vllm_live.wait_state("ready", 240, min_restarts=int(before["restarts"]) + 1)
    assert after["pid"] != before["pid"]
    assert http_get(vllm_live.url + "/health")[0] == 200


async def test_sigterm_drains_running_stream(vllm_live: VllmServer) -> None:
    body = {"model": SERVED_NAME, "prompt": "def", "max_tokens": 2000, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    chunks: list[str] = []
    running_at_sigterm: float | None = None
    draining_seen = False
    async with aiohttp.ClientSession() as http:
        async with http.post(vllm_live.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if not line.strip():
                    continue
                chunks.append(line.decode().strip())
                if len(chunks) == 3:
                    async with http.get(vllm_live.url + "/metrics") as metrics:
                        running_at_sigterm = requests_in_flight(await metrics.text())
                    assert vllm_live.proc is not None
                    vllm_live.proc.send_signal(signal.SIGTERM)
                elif len(chunks) > 3 and not draining_seen:
                    async with http.get(vllm_live.control_url + "/health") as ctl:
                        draining_seen = ctl.status == 503 and await ctl.text() == "draining"
    assert running_at_sigterm == 1, "the stream must still be generating when the drain starts"
    assert draining_seen
    assert chunks[-1] == "data: [DONE]"
    assert json.loads(chunks[-2][len("data: "):])["usage"]["completion_tokens"] == 2000
    assert vllm_live.proc is not None
    rc = await asyncio.get_running_loop().run_in_executor(None, vllm_live.proc.wait, 60)
    assert rc == 0
    assert "drained in" in vllm_live.log_tail(400)
