"""The fast lane (gateway/front.py): the generation endpoints served by the gateway's own
HTTP/1.1 protocol, everything else handed to aiohttp on the same connection, and the two
answering alike."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import base_config
from tests.security.helpers import raw_exchange

BODY = orjson.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
STREAM = orjson.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                       "stream": True})


def post(body: bytes = BODY, path: str = "/v1/chat/completions", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in ``data``, in order (Content-Length or chunked bodies)."""
    out = []
    while data:
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if lines[0].split()[1] == "100":  # an interim answer (Expect: 100-continue), no body
            data = rest
            continue
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        else:
            body, data = b"", rest
            while True:
                size, _, data = data.partition(b"\r\n")
                n = int(size, 16)
                body, data = body + data[:n], data[n + 2:]
                if n == 0:
                    break
        out.append((int(lines[0].split()[1]), headers, body))
    return out


@pytest.fixture
async def gw(sim_factory, gateway_factory):
    sim = await sim_factory()
    return await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"max_body_bytes": 4096,
                                                                           "body_timeout_s": 0.5}))


async def exchange(port: int, data: bytes, expect: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``data`` on one connection and read ``expect`` answers (the connection stays open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        got = b""
        async with asyncio.timeout(10):
            while True:
                try:
                    out = answers(got)
                except (ValueError, IndexError):
                    out = []
                if len(out) >= expect and got.endswith((b"}", b"0\r\n\r\n", b"\r\n\r\n")):
                    return out
                chunk = await reader.read(65536)
                assert chunk, f"closed after {got!r}"
                got += chunk
    finally:
        writer.close()


async def test_generation_requests_are_served_by_the_lane_with_aiohttps_headers(gw) -> None:
    (status, headers, body), = await exchange(gw.port, post(), 1)
    assert status == 200
    assert orjson.loads(body)["object"] == "chat.completion"
    # the app's on_response_prepare signals ran, as for aiohttp's answers
    assert headers["server"] == "infercdn" and headers["x-infercdn-region"] == "eu-west"
    assert headers["content-type"] == "application/json" and "date" in headers
    assert gw.runner.edge.fast_requests == 1 and gw.runner.edge.handed_over == 0


async def test_a_stream_is_chunked_and_ends_with_done(gw) -> None:
    (status, headers, body), = await exchange(gw.port, post(STREAM), 1)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: {") >= 3
    assert gw.runner.edge.fast_requests == 1


async def test_kept_alive_and_pipelined_requests_are_answered_in_order(gw) -> None:
    # three generations sent at once, then a request the lane does not serve: aiohttp takes the
    # connection over with it, after the three answers
    data = post(STREAM) + post() + post(STREAM) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    got = await exchange(gw.port, data, 4)
    assert [s for s, _, _ in got] == [200, 200, 200, 200]
    assert got[0][2].endswith(b"data: [DONE]\n\n") and orjson.loads(got[1][2])["object"] == "chat.completion"
    assert got[2][2].endswith(b"data: [DONE]\n\n") and orjson.loads(got[3][2]) == {"status": "ok"}
    assert gw.runner.edge.fast_requests == 3 and gw.runner.edge.handed_over == 1


async def test_a_request_split_across_reads_is_served(gw) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    data = post()
    try:
        for piece in (data[:7], data[7:40], data[40:-9], data[-9:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        async with asyncio.timeout(10):
            top = await reader.readuntil(b"\r\n\r\n")
            length = int(top.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            out = top + await reader.readexactly(length)
    finally:
        writer.close()
    (status, _, body), = answers(out)
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["role"] == "assistant"
    assert gw.runner.edge.fast_requests == 1


@pytest.mark.parametrize("data", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
    % (len(BODY), BODY),
    post(Expect="100-continue"),
    post().replace(b"HTTP/1.1", b"HTTP/1.0"),
    post(path="/v1/chat/completions?x=1"),
], ids=["chunked", "expect", "http-1.0", "query"])
async def test_what_the_lane_does_not_serve_aiohttp_does(gw, data) -> None:
    out = await raw_exchange(gw.port, data.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n", 1))
    (status, _, body), = answers(out)
    assert status == 200 and b"chat.completion" in body
    assert gw.runner.edge.fast_requests == 0 and gw.runner.edge.handed_over == 1


async def test_an_oversized_body_is_aiohttps_413(gw) -> None:
    big = orjson.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "x" * 5000}]})
    (status, _, body), = answers(await raw_exchange(gw.port, post(big, Connection="close")))
    assert status == 413 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
    assert gw.runner.edge.handed_over == 1


async def test_a_body_that_does_not_come_is_a_408_and_the_connection_ends(gw) -> None:
    data = post()
    out = await raw_exchange(gw.port, data[:-10])  # the server must answer and close by itself
    (status, headers, body), = answers(out)
    assert status == 408 and orjson.loads(body)["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert gw.runner.edge.fast_requests == 1


async def test_a_head_over_the_lanes_bound_goes_to_aiohttp(gw) -> None:
    data = post(**{f"X-Pad-{i}": "y" * 1000 for i in range(40)}, Connection="close")
    (status, _, _), = answers(await raw_exchange(gw.port, data))
    assert status == 200
    assert gw.runner.edge.fast_requests == 0 and gw.runner.edge.handed_over == 1


async def test_a_handler_that_raises_is_a_json_500_and_the_connection_ends(gw, monkeypatch) -> None:
    from gateway import handlers

    async def broken(request, kind, path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(handlers, "generate", broken)  # each new connection looks the handler up
    out = await raw_exchange(gw.port, post())
    (status, headers, body), = answers(out)
    assert status == 500 and orjson.loads(body)["error"]["type"] == "internal_error"
    assert headers["connection"] == "close"


async def test_the_lane_can_be_turned_off(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"fast_lane": False}))
    (status, headers, _), = await exchange(gw.port, post(), 1)
    assert status == 200 and headers["server"] == "infercdn"
    assert gw.runner.edge.fast_requests == 0 and gw.runner.edge.handed_over == 0


async def test_a_header_value_with_a_line_break_never_splits_an_answer() -> None:
    from multidict import CIMultiDict

    from gateway.front_answer import answer_head as _head

    assert _head(200, "OK", CIMultiDict({"a": "b"}), "\r\n") == b"HTTP/1.1 200 OK\r\na: b\r\n\r\n"
    for bad in ("x\r\nSet-Cookie: y", "x\ny", "x\ry"):
        with pytest.raises(ValueError):
            _head(200, "OK", CIMultiDict({"a": bad}), "\r\n")


async def test_a_slow_head_handed_over_keeps_the_time_it_had_left(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"header_timeout_s": 0.6}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(0.4)
        # past the lane's head bound (32 KiB), still no end of the head: aiohttp has it now
        writer.write(b"".join(b"X-Slow-%d: %b\r\n" % (i, b"y" * 7000) for i in range(5)))
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed, never answered
    finally:
        writer.close()
    assert loop.time() - started < 0.6 + 0.4  # not 0.4 + a fresh 0.6
    assert gw.runner.edge.slow_heads == 1 and gw.runner.edge.handed_over == 1
