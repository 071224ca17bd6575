"""A trivially fast OpenAI-compatible server for measuring the load generator itself.

A raw asyncio protocol parsed with httptools answers every request with pre-encoded bytes
(one write per response, no pacing), so the server costs far less per request than the client
and the measurement shows the generator's ceiling.  Run it in its own process::

    python -m loadtest.fastserver --port 0      # prints the URL, serves until killed
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import sys

import httptools
import orjson

MODEL = "fast"


@functools.lru_cache(maxsize=64)
def stream_response(n_tokens: int, chat: bool) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nx-infercdn-region: local\r\nx-infercdn-pool: fast\r\n\r\n")
    parts = []
    for i in range(n_tokens):
        reason = "length" if i == n_tokens - 1 else None
        choice = ({"index": 0, "delta": {"content": "tok "}, "finish_reason": reason} if chat
                  else {"index": 0, "text": "tok ", "finish_reason": reason})
        parts.append({"id": "x", "model": MODEL, "choices": [choice]})
    parts.append({"id": "x", "model": MODEL, "choices": [],
                  "usage": {"prompt_tokens": 8, "completion_tokens": n_tokens, "total_tokens": n_tokens + 8}})
    events = [b"data: " + orjson.dumps(p) + b"\n\n" for p in parts] + [b"data: [DONE]\n\n"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    return head + body


@functools.lru_cache(maxsize=64)
def json_response(n_tokens: int, chat: bool) -> bytes:
    choice = ({"index": 0, "message": {"role": "assistant", "content": "tok " * n_tokens}, "finish_reason": "length"}
              if chat else {"index": 0, "text": "tok " * n_tokens, "finish_reason": "length"})
    body = orjson.dumps({"id": "x", "model": MODEL, "choices": [choice],
                         "usage": {"prompt_tokens": 8, "completion_tokens": n_tokens, "total_tokens": n_tokens + 8}})
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-infercdn-region: local\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def models_response() -> bytes:
    body = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class FastProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(self._answer())
        self.url, self.body = b"", []

    def _answer(self) -> bytes:
        if self.url.endswith(b"/models"):
            return models_response()
        try:
            req = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            req = {}
        n = max(1, min(int(req.get("max_tokens") or 16), 4096))
        chat = b"chat" in self.url
        return stream_response(n, chat) if req.get("stream") else json_response(n, chat)


async def start(port: int = 0) -> tuple[asyncio.AbstractServer, str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FastProtocol, "127.0.0.1", port, backlog=4096)
    host, bound = server.sockets[0].getsockname()[:2]
    return server, f"http://{host}:{bound}"


async def _serve(port: int) -> None:
    server, url = await start(port)
    print(url, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args.port))
    except ImportError:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
