"""A tiny aiohttp OpenAI-style server for the load generator's tests.

Behaviour by ``mode``: ``ok`` (stream or JSON per request; region header derived from the
client's X-Forwarded-For), ``500`` (every request fails), ``cut`` (streams end without a
finish_reason or [DONE]), ``inband`` (an error event mid-stream), ``nousage`` (no usage chunk).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from loadtest.clients import CITIES

REGION_OF_COUNTRY = {"SG": "ap-southeast", "GB": "eu-west", "US": "us-east"}
IP_REGION = {ip: REGION_OF_COUNTRY.get(c.country, "us-east") for c in CITIES.values() for ip in c.ips}


@dataclass
class SSEServer:
    mode: str = "ok"
    itl_s: float = 0.0
    seen_ips: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    url: str = ""

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny-chat", "object": "model"}]})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        ip = request.headers.get("X-Forwarded-For", "")
        self.seen_ips.append(ip)
        if self.mode == "500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        region = IP_REGION.get(ip, "us-east")
        headers = {"x-infercdn-region": region, "x-infercdn-pool": f"{region}-a",
                   "x-infercdn-attempts": "2" if region == "eu-west" else "1"}
        n = int(body.get("max_tokens", 4))
        if not body.get("stream"):
            msg = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x " * n},
                                "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5}}
            return web.json_response(msg, headers=headers)
        return await self._stream(request, n, headers)

    async def _stream(self, request: web.Request, n: int, headers: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            if self.mode == "cut" and i == n // 2:
                return resp
            if self.mode == "inband" and i == n // 2:
                await resp.write(b'data: {"error": {"message": "upstream died", "code": 502}}\n\n')
                return resp
            reason = "length" if i == n - 1 else None
            chunk = {"choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": reason}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if self.itl_s:
                await asyncio.sleep(self.itl_s)
        if self.mode != "nousage":
            usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5}}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_post("/v1/completions", self.handle)
        return app


async def start_server(server: SSEServer) -> web.AppRunner:
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def sse_server() -> AsyncIterator[SSEServer]:
    server = SSEServer()
    runner = await start_server(server)
    try:
        yield server
    finally:
        await runner.cleanup()
