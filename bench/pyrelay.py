"""The floor of a Python proxy: what the gateway's runtime (uvloop + httptools, one process)
costs per request when it does nothing but relay.

    python -m bench.pyrelay --port P --upstream URL [--upstream URL ...] [--assemble]

Each client request goes to the next upstream in turn over a kept-alive raw connection; a
``Content-Length`` answer is relayed whole, a chunked one (a stream) chunk by chunk, one client
write per upstream read.  With ``--assemble`` (bench system ``pyrelay-assembled``) a non-stream
request is asked of the upstream as a stream and its events are answered as one JSON object,
as infercdn serves non-stream requests by default (``models.<m>.non_stream: stream``): the
floor of that work, events collected per read and parsed once at the end.  No routing, health, limits, metrics, resume or error handling beyond
closing: a yardstick for ``bench.run`` (system ``pyrelay``), not a proxy to use.  The gap
between it and ``infercdn-passthrough`` in one run is the cost of the gateway's own Python."""
from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from itertools import cycle
from urllib.parse import urlsplit

import httptools
import orjson

from loadtest.fastserver import FastProtocol


class Upstream(asyncio.Protocol):
    """One kept-alive upstream connection serving one client request at a time."""

    def __init__(self, idle: list[Upstream]) -> None:
        self.idle = idle
        self.assemble = False  # this exchange's stream is answered as one JSON object
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.chunked = False
        self.length: int | None = None
        self.parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.chunked and self.parts and self.client is not None and not self.assemble:
            body = b"".join(self.parts)
            self.parts.clear()
            self.client.write(b"%x\r\n%b\r\n" % (len(body), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.idle:
            self.idle.remove(self)
        if self.client is not None:
            self.client.close()

    def on_message_begin(self) -> None:
        self.length, self.parts = None, []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length":
            self.length = int(value)

    def on_headers_complete(self) -> None:
        self.chunked = self.length is None
        if self.chunked and self.client is not None and not self.assemble:
            status = self.parser.get_status_code()
            self.client.write(b"HTTP/1.1 %d OK\r\nContent-Type: text/event-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" % status)

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        body = b"".join(self.parts)
        self.parts.clear()
        if client is not None:
            if self.assemble:
                answer = assembled(body)
                client.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (self.parser.get_status_code(), len(answer), answer))
            elif self.chunked:
                client.write((b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n")
            else:
                client.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (self.parser.get_status_code(), len(body), body))
        self.idle.append(self)


def assembled(events: bytes) -> bytes:
    """The one JSON answer of a chat stream's events: one parse of them all as an array, the
    text joined, id, model, finish reason and usage taken from the events that carry them."""
    body = events.removesuffix(b"data: [DONE]\n\n")
    docs = orjson.loads(b"[" + b"},{".join(body[6:-2].split(b"}\n\ndata: {")) + b"]") if body else []
    text, finish, usage = [], None, None
    for doc in docs:
        for choice in doc.get("choices") or ():
            text.append(choice.get("delta", {}).get("content") or "")
            finish = choice.get("finish_reason") or finish
        usage = doc.get("usage") or usage
    head = docs[0] if docs else {}
    return orjson.dumps({"id": head.get("id"), "object": "chat.completion", "created": head.get("created"),
                         "model": head.get("model"), "choices": [{"index": 0, "message": {
                             "role": "assistant", "content": "".join(text)}, "finish_reason": finish}],
                         "usage": usage})


class Client(FastProtocol):
    """The request side of loadtest's fast server (httptools, URL and body collected); the
    answer is the upstream's."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def on_message_complete(self) -> None:
        self.relay.forward(self, self.url, b"".join(self.body))
        self.url, self.body = b"", []

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Relay:
    def __init__(self, upstreams: list[str], assemble: bool = False) -> None:
        self.assemble = assemble
        self.loop = asyncio.get_running_loop()
        self.targets = cycle([(urlsplit(u).hostname or "127.0.0.1", urlsplit(u).port or 80) for u in upstreams])
        self.idle: dict[tuple[str, int], list[Upstream]] = {}

    def forward(self, client: Client, url: bytes, body: bytes) -> None:
        assemble = False
        if self.assemble:
            req = orjson.loads(body)
            if not req.get("stream"):
                req["stream"] = assemble = True
                body = orjson.dumps(req)
        target = next(self.targets)
        idle = self.idle.setdefault(target, [])
        head = b"POST %b HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" \
            % (url, len(body))
        if idle:
            up = idle.pop()
            up.client, up.assemble = client, assemble
            assert up.transport is not None
            up.transport.write(head + body)
        else:
            self.loop.create_task(self._dial(target, idle, client, head + body, assemble))

    async def _dial(self, target: tuple[str, int], idle: list[Upstream], client: Client, data: bytes,
                    assemble: bool) -> None:
        try:
            _, up = await self.loop.create_connection(lambda: Upstream(idle), *target)
        except OSError:
            client.close()
            return
        up.client, up.assemble = client, assemble
        assert up.transport is not None
        up.transport.write(data)


async def start(port: int, upstreams: list[str], assemble: bool = False) -> asyncio.Server:
    """Listening on 127.0.0.1:``port`` (0: any free port)."""
    relay = Relay(upstreams, assemble)
    return await asyncio.get_running_loop().create_server(lambda: Client(relay), "127.0.0.1", port, backlog=1024)


async def serve(port: int, upstreams: list[str], assemble: bool) -> None:
    server = await start(port, upstreams, assemble)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    import uvloop

    p = argparse.ArgumentParser(prog="bench.pyrelay")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True)
    p.add_argument("--assemble", action="store_true", help="answer non-stream requests from upstream streams")
    args = p.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.assemble))
    return 0


if __name__ == "__main__":
    sys.exit(main())
