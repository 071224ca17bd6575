"""Exact resume: continuing a cut generation reproduces the uninterrupted one byte for byte."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from worker.sim import Simulator
from worker.sim.testing import parse_sse, running_sim, stream_text, stream_token_ids

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]


@pytest.fixture
async def sims() -> AsyncIterator[tuple[Simulator, Simulator]]:
    """Two pools of the same model with different rng seeds (the weights are the same)."""
    async with running_sim(ttft_ms=0, itl_ms=0, seed=1) as a, running_sim(ttft_ms=0, itl_ms=0, seed=2) as b:
        yield a, b


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with http.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        assert resp.status == 200, await resp.text()
        events, done = parse_sse(await resp.read())
    assert done
    return events


@pytest.mark.parametrize("extra", [{"temperature": 0}, {"temperature": 0.9, "seed": 42}])
async def test_token_level_resume_is_exact(sims: tuple[Simulator, Simulator], http: aiohttp.ClientSession,
                                           extra: dict[str, Any]) -> None:
    a, b = sims
    body = {"messages": MESSAGES, "max_tokens": 24, "return_token_ids": True, **extra}
    full = await stream(http, f"{a.url}/v1/chat/completions", body)
    prompt_ids, ids = full[0]["prompt_token_ids"], stream_token_ids(full)
    cut = 9
    rest = await stream(http, f"{b.url}/v1/completions",
                        {"prompt": prompt_ids + ids[:cut], "max_tokens": 24 - cut, "return_token_ids": True, **extra})
    assert stream_token_ids(rest) == ids[cut:]
    head = a.core.tokenizer.decode(ids[:cut])
    assert head + stream_text(rest) == stream_text(full)
    assert rest[-1]["usage"]["completion_tokens"] == 24 - cut


async def test_text_level_chat_resume_is_exact(sims: tuple[Simulator, Simulator], http: aiohttp.ClientSession) -> None:
    a, b = sims
    body = {"messages": MESSAGES, "max_tokens": 30, "temperature": 0}
    full = await stream(http, f"{a.url}/v1/chat/completions", body)
    text = stream_text(full)
    chunks = [e["choices"][0]["delta"].get("content", "") for e in full if e["choices"]]
    so_far = "".join(chunks[:12])
    rest = await stream(http, f"{b.url}/v1/chat/completions", {
        **body, "max_tokens": 30 - 11, "add_generation_prompt": False, "continue_final_message": True,
        "messages": MESSAGES + [{"role": "assistant", "content": so_far}]})
    assert rest[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert so_far + stream_text(rest) == text


async def test_text_level_completion_resume_is_exact(sims: tuple[Simulator, Simulator],
                                                     http: aiohttp.ClientSession) -> None:
    a, b = sims
    body = {"prompt": "the world was new", "max_tokens": 20, "temperature": 0}
    full = stream_text(await stream(http, f"{a.url}/v1/completions", body))
    head = full[: len(" ".join(full.split(" ")[:6]))]  # ends just before a space
    n_head = len(a.core.tokenizer.encode(head))
    rest = await stream(http, f"{b.url}/v1/completions",
                        {**body, "prompt": body["prompt"] + head, "max_tokens": 20 - n_head})
    assert head + stream_text(rest) == full


async def test_unseeded_sampling_differs_per_request(sims: tuple[Simulator, Simulator],
                                                     http: aiohttp.ClientSession) -> None:
    a, _ = sims
    body = {"prompt": "the world was new", "max_tokens": 12, "temperature": 1.0}
    texts = {stream_text(await stream(http, f"{a.url}/v1/completions", body)) for _ in range(3)}
    assert len(texts) == 3
