"""Bad input gets a clear OpenAI-format error with the right status."""
from __future__ import annotations

import aiohttp
from aiohttp import web
import pytest

from tests.conftest import base_config


@pytest.fixture
async def gw(sim_factory, gateway_factory):
    sim = await sim_factory()
    data = base_config({"eu-west": [sim.url]})
    data["gateway"]["max_body_bytes"] = 2048
    return await gateway_factory(data)


async def _post(gw, body: bytes | str, path: str = "/v1/chat/completions", **headers: str):
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + path, data=body, headers={"Content-Type": "application/json", **headers}) as r:
            return r.status, await r.json(), r.headers


@pytest.mark.parametrize(("body", "status", "param", "fragment"), [
    ("{not json", 400, None, "not valid JSON"),
    ("", 400, None, "empty"),
    ("[1, 2]", 400, None, "JSON object"),
    ('{"messages": []}', 400, "model", "model"),
    ('{"model": "tiny-chat"}', 400, "messages", "messages"),
    ('{"model": "tiny-chat", "messages": [], "stream": "yes"}', 400, "stream", "boolean"),
    ('{"model": "nope", "messages": []}', 404, "model", "does not exist"),
])
async def test_bad_requests(gw, body: str, status: int, param: str | None, fragment: str) -> None:
    got, payload, _ = await _post(gw, body)
    assert got == status
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert fragment in err["message"]


async def test_body_over_limit_is_413(gw) -> None:
    big = '{"model": "tiny-chat", "messages": [{"role": "user", "content": "' + "x" * 4096 + '"}]}'
    status, payload, _ = await _post(gw, big)
    assert status == 413
    assert payload["error"]["code"] == "request_too_large"


async def test_request_id_is_propagated(gw) -> None:
    status, payload, headers = await _post(gw, '{"model": "tiny-chat", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2}',
                                           **{"X-Request-Id": "abc-123"})
    assert status == 200
    assert headers["x-request-id"] == "abc-123"


async def test_unknown_path_is_openai_404(gw) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/v1/nothing") as r:
            assert r.status == 404


async def test_stream_head_has_one_content_type_whatever_the_upstream_case(gateway_factory) -> None:
    """uvicorn (vLLM) sends `content-type` in lower case; the client must get one header."""
    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n')
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", sse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        gw = await gateway_factory(base_config({"eu-west": [f"http://127.0.0.1:{port}"]}))
        body = '{"model": "tiny-chat", "messages": [{"role": "user", "content": "a"}], "stream": true}'
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                assert r.status == 200
                assert r.headers.getall("Content-Type") == ["text/event-stream; charset=utf-8"]
                assert (await r.read()).endswith(b"data: [DONE]\n\n")
    finally:
        await runner.cleanup()
