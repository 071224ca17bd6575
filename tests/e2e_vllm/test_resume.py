"""Exact mid-stream resume on the real engine.  vLLM is configured twice: as eu-west's endpoint
behind a proxy that cuts the stream after K events (a host dying mid-generation), and as us-east's
endpoint directly.  The gateway resumes the generation in us-east from the token ids it has seen;
at temperature 0 the client gets exactly the text and usage of an uninterrupted generation."""
from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.cutproxy import CutProxy
from tests.e2e_vllm.helpers import CHAT, MARKS, MODEL, PROMPT, sdk, vllm_config, wait_idle
from tests.vllm_fixture import VllmServer

pytestmark = MARKS

CUT_AFTER = 6  # events relayed before the cut (a chat stream's first is the role chunk)
MAX_TOKENS = 40


def text_of(kind: str, chunks: list[Any]) -> str:
    if kind == "chat":
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return "".join(c.choices[0].text for c in chunks if c.choices)


async def generate(base_url: str, kind: str, ip: str | None = None) -> tuple[Any, list[Any]]:
    args: dict[str, Any] = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
                            "stream_options": {"include_usage": True}}
    async with sdk(base_url, ip) as client:
        if kind == "chat":
            raw = await client.chat.completions.with_raw_response.create(messages=CHAT, **args)
        else:
            raw = await client.completions.with_raw_response.create(prompt=PROMPT, **args)
        return raw.headers, [c async for c in raw.parse()]


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_stream_cut_mid_generation_is_resumed_exactly(vllm_server: VllmServer, gateway_factory,
                                                            kind: str) -> None:
    await wait_idle(vllm_server.url)
    _, expected = await generate(vllm_server.url, kind)
    proxy = CutProxy("127.0.0.1", vllm_server.port, cut_after_events=CUT_AFTER)
    await proxy.start()
    try:
        data = vllm_config(vllm_server, {"us-east": [vllm_server.url]})
        data["pools"][0]["endpoints"][0]["url"] = proxy.url  # eu-west-0: vLLM through the cutting proxy
        gw = await gateway_factory(data)
        headers, got = await generate(gw.url, kind, LONDON)
    finally:
        await proxy.stop()
    assert proxy.cuts == 1, "the first attempt must have been cut"
    assert headers["x-infercdn-region"] == "eu-west"  # the stream started there
    assert text_of(kind, got) == text_of(kind, expected)
    assert len(text_of(kind, got)) > 0
    usage = [c.usage for c in got if c.usage is not None]
    assert usage == [expected[-1].usage]
    assert usage[0].completion_tokens == MAX_TOKENS
    # the ids the gateway asked for to resume are not shown to a client that did not ask for them:
    # null, as vLLM sends them unasked
    assert all((c.choices[0].model_extra or {}).get("token_ids") is None for c in got if c.choices)
    assert [c.choices[0].finish_reason for c in got if c.choices][-1] == "length"


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_non_stream_answer_cut_mid_generation_is_resumed_exactly(vllm_server: VllmServer, gateway_factory,
                                                                       kind: str) -> None:
    """A non-stream request is served from an upstream stream: a host dying mid-generation is
    resumed on the next pool, and the one JSON answer equals vLLM's own non-stream answer."""
    await wait_idle(vllm_server.url)
    args: dict[str, Any] = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0}
    args.update(messages=CHAT) if kind == "chat" else args.update(prompt=PROMPT)
    create = (lambda c: c.chat.completions) if kind == "chat" else (lambda c: c.completions)
    async with sdk(vllm_server.url) as direct:
        expected = await create(direct).create(**args)
    proxy = CutProxy("127.0.0.1", vllm_server.port, cut_after_events=CUT_AFTER)
    await proxy.start()
    try:
        data = vllm_config(vllm_server, {"us-east": [vllm_server.url]})
        data["pools"][0]["endpoints"][0]["url"] = proxy.url
        gw = await gateway_factory(data)
        async with sdk(gw.url, LONDON) as client:
            raw = await create(client).with_raw_response.create(**args)
    finally:
        await proxy.stop()
    got = raw.parse()
    assert proxy.cuts == 1, "the first attempt must have been cut"
    assert (raw.headers["x-infercdn-region"], raw.headers["x-infercdn-attempts"]) == ("us-east", "2")
    assert b'"stream":true' in bytes(proxy.sent)  # asked upstream as a stream
    text = (lambda r: r.choices[0].message.content) if kind == "chat" else (lambda r: r.choices[0].text)
    assert text(got) == text(expected) and text(got)
    assert got.usage == expected.usage and got.usage.completion_tokens == MAX_TOKENS
    assert got.choices[0].finish_reason == expected.choices[0].finish_reason == "length"
    assert (got.object, got.model, got.system_fingerprint) == (expected.object, MODEL, expected.system_fingerprint)
