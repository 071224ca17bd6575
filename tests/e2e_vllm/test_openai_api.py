"""The official openai SDK through the gateway to real vLLM (CPU, tiny model): chat and
completions, stream and not, answers and usage identical to asking vLLM directly at temperature 0;
vLLM's errors unchanged; a public model name served under vLLM's own name."""
from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.cutproxy import CutProxy
from tests.e2e_vllm.helpers import CHAT, MARKS, MODEL, PROMPT, sdk, vllm_config
from tests.vllm_fixture import VllmServer

pytestmark = MARKS


@pytest.fixture
async def gw(vllm_server: VllmServer, sim_factory, gateway_factory):  # type: ignore[no-untyped-def]
    """vLLM in eu-west (where LONDON lands), simulators elsewhere."""
    others = {"us-east": [(await sim_factory()).url], "ap-southeast": [(await sim_factory()).url]}
    return await gateway_factory(vllm_config(vllm_server, others))


def chat_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def comp_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].text for c in chunks if c.choices)


async def test_chat_non_stream_matches_vllm(gw, vllm_server: VllmServer) -> None:
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 24, "temperature": 0}
    async with sdk(gw.url, LONDON) as client, sdk(vllm_server.url) as direct:
        raw = await client.chat.completions.with_raw_response.create(**args)
        expected = await direct.chat.completions.create(**args)
    got = raw.parse()
    assert raw.headers["x-infercdn-pool"] == "eu-west-pool"
    assert raw.headers["x-infercdn-attempts"] == "1"
    assert got.model == MODEL
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.choices[0].finish_reason == expected.choices[0].finish_reason == "length"
    assert got.usage == expected.usage and got.usage.completion_tokens == 24


async def test_chat_stream_with_usage_matches_vllm(gw, vllm_server: VllmServer) -> None:
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 32, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with sdk(gw.url, LONDON) as client, sdk(vllm_server.url) as direct:
        got = [c async for c in await client.chat.completions.create(**args)]
        expected = [c async for c in await direct.chat.completions.create(**args)]
    assert got[0].choices[0].delta.role == "assistant"
    assert chat_text(got) == chat_text(expected) and chat_text(got)
    usage = [c.usage for c in got if c.usage is not None]
    assert usage == [expected[-1].usage] and usage[0].completion_tokens == 32
    assert got[-1].choices == []  # the usage chunk comes last, as vLLM sends it
    assert {c.model for c in got} == {MODEL}


async def test_completions_non_stream_and_stream_match_vllm(gw, vllm_server: VllmServer) -> None:
    args = {"model": MODEL, "prompt": PROMPT, "max_tokens": 20, "temperature": 0}
    async with sdk(gw.url, LONDON) as client, sdk(vllm_server.url) as direct:
        done = await client.completions.create(**args)
        streamed = [c async for c in await client.completions.create(
            **args, stream=True, stream_options={"include_usage": True})]
        expected = await direct.completions.create(**args)
    assert done.choices[0].text == comp_text(streamed) == expected.choices[0].text
    assert done.usage == streamed[-1].usage == expected.usage
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens == 20


@pytest.mark.parametrize("stream", [False, True])
async def test_context_too_long_is_vllms_400_unchanged(gw, vllm_server: VllmServer, stream: bool) -> None:
    args: dict[str, Any] = {"model": MODEL, "prompt": "x " * 5000, "max_tokens": 4, "stream": stream}
    async with sdk(gw.url, LONDON) as client, sdk(vllm_server.url) as direct:
        with pytest.raises(openai.BadRequestError) as got:
            await client.completions.create(**args)
        with pytest.raises(openai.BadRequestError) as expected:
            await direct.completions.create(**args)
    assert got.value.status_code == 400
    assert got.value.body == expected.value.body  # vLLM's error object, byte for byte after parsing
    assert got.value.body["type"] == "BadRequestError"
    assert "maximum context length" in got.value.body["message"]
    assert got.value.response.headers["x-infercdn-pool"] == "eu-west-pool"


async def test_unknown_upstream_model_is_vllms_404_unchanged(vllm_server: VllmServer, gateway_factory) -> None:
    """The gateway answers 404 itself for models no pool serves; a pool that maps a public name
    to a name vLLM does not serve gets vLLM's own 404 through."""
    data = vllm_config(vllm_server)
    data["pools"][0]["models"] = {"tiny-ghost": "no-such-model"}
    gw = await gateway_factory(data)
    async with sdk(gw.url, LONDON) as client, sdk(vllm_server.url) as direct:
        with pytest.raises(openai.NotFoundError) as got:
            await client.chat.completions.create(model="tiny-ghost", messages=CHAT, max_tokens=4)
        with pytest.raises(openai.NotFoundError) as expected:
            await direct.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=4)
    assert got.value.body == expected.value.body
    assert got.value.body["type"] == "NotFoundError" and got.value.body["code"] == 404
    assert got.value.response.headers["x-infercdn-pool"] == "eu-west-pool"


@pytest.mark.parametrize("stream", [False, True])
async def test_public_name_is_sent_upstream_as_vllms_name(vllm_server: VllmServer, gateway_factory,
                                                          stream: bool) -> None:
    """Pool models {tiny-public: tiny-chat}: vLLM is asked for tiny-chat (a recording proxy sees
    the request) and the answer names tiny-chat, the model that actually answered."""
    recorder = CutProxy("127.0.0.1", vllm_server.port)
    await recorder.start()
    try:
        data = vllm_config(vllm_server)
        data["pools"][0]["endpoints"][0]["url"] = recorder.url
        data["pools"][0]["models"] = {"tiny-public": MODEL}
        gw = await gateway_factory(data)
        async with sdk(gw.url, LONDON) as client:
            if stream:
                chunks = [c async for c in await client.chat.completions.create(
                    model="tiny-public", messages=CHAT, max_tokens=6, stream=True)]
                models = {c.model for c in chunks}
            else:
                models = {(await client.chat.completions.create(
                    model="tiny-public", messages=CHAT, max_tokens=6)).model}
    finally:
        await recorder.stop()
    posts = [part for part in bytes(recorder.sent).split(b"POST ")[1:]]
    assert len(posts) == 1 and posts[0].startswith(b"/v1/chat/completions ")
    assert b'"model":"tiny-chat"' in posts[0].replace(b'": "', b'":"')
    assert b"tiny-public" not in posts[0]
    assert models == {MODEL}


async def test_stream_has_one_content_type_header(gw) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/completions", json=body, headers={"X-Forwarded-For": LONDON}) as resp:
        assert resp.status == 200 and resp.headers["x-infercdn-pool"] == "eu-west-pool"
        await resp.read()
        names = [name.lower() for name, _ in resp.raw_headers]
    assert names.count(b"content-type") == 1
