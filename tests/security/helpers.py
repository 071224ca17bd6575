"""Small clients for the security tests: whole answers, raw bytes, and metric lines."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
STREAM = {**CHAT, "stream": True}


async def call(url: str, body: Any = None, path: str = "/v1/chat/completions", method: str = "POST",
               headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    """(status, whole body, headers); bounded by a 30 s total timeout."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if data is not None:
            kwargs["data"] = data
        elif body is not None:
            kwargs["json"] = body
        async with session.request(method, url + path, **kwargs) as r:
            return r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()}


def openai_error(body: bytes) -> dict[str, Any]:
    """The error object of an OpenAI-format error body (asserting its shape)."""
    doc = orjson.loads(body)
    assert set(doc) == {"error"}, doc
    assert set(doc["error"]) == {"message", "type", "param", "code"}, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]


def sse_events(body: bytes) -> list[bytes]:
    return [block for block in body.split(b"\n\n") if block]


async def raw_exchange(port: int, data: bytes, read_timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                out += chunk
        return out
    finally:
        writer.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
