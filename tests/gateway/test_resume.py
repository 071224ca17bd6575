"""Mid-stream resume: a stream cut after N tokens continues on another pool, and the client
gets exactly the uninterrupted answer (content and final usage), one [DONE]."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import LONDON, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 24,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
COMPLETION = {"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
              "stream": True, "stream_options": {"include_usage": True}}


async def stream(url: str, path: str, body: dict[str, Any], ip: str = LONDON) -> tuple[list[dict], bytes, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body, headers={"X-Forwarded-For": ip}) as r:
            assert r.status == 200, await r.text()
            raw = await r.read()
            headers = dict(r.headers)
    docs = [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    return docs, raw, headers


def content(docs: list[dict]) -> str:
    out = ""
    for d in docs:
        for c in d.get("choices", []):
            out += (c.get("delta") or {}).get("content") or c.get("text") or ""
    return out


def usage(docs: list[dict]) -> dict | None:
    found = [d["usage"] for d in docs if d.get("usage")]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture
async def cut_region(sim_factory, gateway_factory):
    """eu-west (nearest to London) cuts every stream after 7 tokens; us-east is healthy."""
    eu = await sim_factory(fault="cut_after:tokens=7")
    us = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    return gw, eu, us


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_cut_stream_is_resumed_exactly(cut_region, path: str, body: dict) -> None:
    gw, eu, us = cut_region
    expected_docs, _, _ = await stream(us.url, path, body)  # the uninterrupted generation
    docs, raw, headers = await stream(gw.url, path, body)
    assert headers["x-infercdn-region"] == "eu-west"  # it started there
    assert content(docs) == content(expected_docs)
    assert usage(docs) == usage(expected_docs)
    assert raw.count(b"data: [DONE]") == 1 and raw.rstrip().endswith(b"data: [DONE]")
    assert b'token_ids":[' not in raw  # the ids the gateway asked for are not shown to the client
    assert all(c.get("token_ids") is None for d in docs for c in d["choices"])  # null, as vLLM sends them unasked
    assert b'"error"' not in raw
    assert len({d["id"] for d in docs}) == 1  # one stream, one id
    if path == "/v1/chat/completions":
        assert sum(1 for d in docs for c in d["choices"] if "role" in (c.get("delta") or {})) == 1
    assert eu.stats.requests_total == 1 and us.stats.requests_total == 2


async def test_resume_keeps_token_ids_when_the_client_asked(cut_region) -> None:
    gw, _, us = cut_region
    body = {**COMPLETION, "return_token_ids": True}
    expected, _, _ = await stream(us.url, "/v1/completions", body)
    docs, _, _ = await stream(gw.url, "/v1/completions", body)
    ids = [i for d in docs for c in d["choices"] for i in (c.get("token_ids") or [])]
    assert ids == [i for d in expected for c in d["choices"] for i in (c.get("token_ids") or [])]
    assert content(docs) == content(expected)


async def test_text_level_resume_when_configured(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(fault="cut_after:tokens=5"), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]},
                                           models={"*": {"resume": "text"}}))
    expected, _, _ = await stream(us.url, "/v1/chat/completions", CHAT)
    docs, raw, _ = await stream(gw.url, "/v1/chat/completions", CHAT)
    assert content(docs) == content(expected)
    assert usage(docs)["completion_tokens"] == usage(expected)["completion_tokens"]
    assert raw.count(b"data: [DONE]") == 1


async def test_pool_that_refuses_continuations_regenerates_and_skips(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(fault="cut_after:tokens=6"), await sim_factory(fault="reject_continuation")
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    expected_sim = await sim_factory()
    expected, _, _ = await stream(expected_sim.url, "/v1/chat/completions", CHAT)
    docs, raw, _ = await stream(gw.url, "/v1/chat/completions", CHAT)
    assert content(docs) == content(expected)
    assert usage(docs) == usage(expected)
    assert raw.count(b"data: [DONE]") == 1


async def test_sampled_stream_on_a_non_continuing_pool_ends_with_an_in_band_error(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(fault="cut_after:tokens=6"), await sim_factory(fault="reject_continuation")
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    body = {**CHAT, "temperature": 0.8}  # not deterministic: no regeneration possible
    docs, raw, _ = await stream(gw.url, "/v1/chat/completions", body)
    assert b"data: [DONE]" not in raw  # never a truncated stream presented as success
    errors = [d["error"] for d in docs if "error" in d]
    assert len(errors) == 1
    assert "could not be resumed" in errors[0]["message"]
    assert "400" not in errors[0]["message"] or "refused" in errors[0]["message"]
