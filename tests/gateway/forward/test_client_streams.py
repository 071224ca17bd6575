"""The two client streams on fakes: HttpStream writes the head, SSE and chunk framing to a
fake transport; AssembledAnswer makes one JSON answer of the events and bounds what it keeps."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from gateway.errors import Unavailable
from gateway.forward.assembled import AssembledAnswer
from gateway.forward.client_http import HttpStream
from gateway.forward.client_stream import ClientGone
from gateway.forward.upstream import UpstreamTooLarge
from gateway.metrics import build_metrics
from tests.gateway.forward import fakes
from tests.routing.helpers import FakeClock

EVENT = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
LAST = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.data += part

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return len(self.data)

    def get_extra_info(self, name: str, default=None):
        return default


class _Protocol:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self._paused = False

    async def _drain_helper(self) -> None:
        return None


def parts():
    clock, topo, metrics = FakeClock(), fakes.topology(), build_metrics()
    obs = fakes.observations(topo, clock)
    return fakes.ledger(obs, clock, metrics), fakes.candidates(topo)[0], metrics


def http_stream(ex) -> tuple[HttpStream, FakeTransport]:
    transport = FakeTransport()
    writer = StreamWriter(_Protocol(transport), asyncio.get_running_loop())  # type: ignore[arg-type]
    request = make_mocked_request("POST", "/v1/chat/completions", writer=writer, transport=transport)
    ledger, _, _ = parts()
    return HttpStream(request, ex, ledger), transport


async def test_http_stream_writes_the_head_then_chunk_framed_events() -> None:
    ex = fakes.exchange()
    ledger, cand, _ = parts()
    out, transport = http_stream(ex)
    out.ledger = ledger
    assert not out.committed
    assert await out.open(cand, "m", {"openai-model": "m"}) == b""
    assert out.committed and out.chunked
    await out.write(EVENT)  # the head goes out with the first write
    out.push(LAST)
    response = await out.finish(cand, None, "200")
    head, _, body = bytes(transport.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
    assert b"x-infercdn-region: eu-west" in head and b"x-request-id: rid" in head
    assert body == b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(EVENT), EVENT, len(LAST), LAST)
    assert response is out.response and ex.status == "200"


async def test_http_stream_keepalives_commit_the_head_and_name_the_region_later() -> None:
    ex = fakes.exchange()
    _, cand, _ = parts()
    out, transport = http_stream(ex)
    await out.keepalive(attempts=1)
    assert out.committed and b"x-infercdn-attempts: 1" in transport.data and b": keep-alive" in transport.data
    assert await out.open(cand, "m", {}) == b": served by region=eu-west pool=eu-a\n\n"


async def test_a_push_to_a_closing_client_is_client_gone() -> None:
    ex = fakes.exchange()
    _, cand, _ = parts()
    out, transport = http_stream(ex)
    await out.open(cand, "m", {})
    transport.closing = True
    assert out.gone()
    with pytest.raises(ClientGone):
        out.push(EVENT)


async def test_assembled_answer_is_one_json_object_of_the_events() -> None:
    ex = fakes.exchange(stream=False)
    ledger, cand, _ = parts()
    out = AssembledAnswer(ex, ledger, 1 << 20)
    assert await out.open(cand, "m", {}) == b"" and not out.committed
    await out.write(EVENT)
    out.push(LAST + b"data: [DONE]\n\n")
    response = await out.finish(cand, None, "200")
    assert isinstance(response, web.Response) and response.status == 200
    doc = orjson.loads(response.body)
    assert doc["object"] == "chat.completion" and doc["id"] == "c1"
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert doc["choices"][0]["finish_reason"] == "stop" and doc["usage"]["total_tokens"] == 5
    assert ex.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5} and ex.status == "200"


async def test_assembled_answer_over_its_bound_fails_the_attempt() -> None:
    ex = fakes.exchange(stream=False)
    ledger, _, _ = parts()
    out = AssembledAnswer(ex, ledger, len(EVENT) + 10)
    out.push(EVENT)
    with pytest.raises(UpstreamTooLarge):
        out.push(LAST)
    assert out.data == bytearray()  # what it held is let go


async def test_assembled_answer_that_cannot_be_completed_is_a_503() -> None:
    ex = fakes.exchange(stream=False)
    ledger, cand, _ = parts()
    out = AssembledAnswer(ex, ledger, 1 << 20)
    with pytest.raises(Unavailable) as caught:
        await out.finish(cand, None, "200")  # no event carried a choice
    assert "without an answer" in caught.value.message and ex.status == "503"


async def test_assembled_answer_relays_a_pool_error_event_as_its_status() -> None:
    ex = fakes.exchange(stream=False)
    ledger, cand, _ = parts()
    out = AssembledAnswer(ex, ledger, 1 << 20)
    out.push(b'data: {"error": {"message": "too long", "code": 400}}\n\n')
    response = await out.finish(cand, None, "200")
    assert isinstance(response, web.Response) and response.status == 400 and ex.status == "400"
    assert orjson.loads(response.body)["error"]["message"] == "too long"


async def test_a_last_write_ends_the_chunked_body_in_the_same_write() -> None:
    ex = fakes.exchange()
    _, cand, _ = parts()
    out, transport = http_stream(ex)
    await out.open(cand, "m", {})
    await out.write(EVENT + b"data: [DONE]\n\n", last=True)  # a whole answer in the first read
    await out.finish(cand, None, "200")  # the end is not written twice
    _, _, body = bytes(transport.data).partition(b"\r\n\r\n")
    done = EVENT + b"data: [DONE]\n\n"
    assert body == b"%x\r\n%b\r\n0\r\n\r\n" % (len(done), done)


class FastLaneResponse(web.StreamResponse):
    """What the fast lane's stream response offers push: being told the body ended inline."""

    def __init__(self) -> None:
        super().__init__(status=200, headers={"Transfer-Encoding": "chunked"})
        self.ended = 0

    def ended_inline(self) -> None:
        self.ended += 1


async def test_a_last_push_ends_the_body_inline_only_where_the_response_can_be_told() -> None:
    ex = fakes.exchange()
    _, cand, _ = parts()
    out, transport = http_stream(ex)
    await out.open(cand, "m", {})
    await out.write(EVENT)
    out.push(LAST, last=True)  # aiohttp's response ends the body itself, in finish
    assert not bytes(transport.data).endswith(b"0\r\n\r\n")
    lane = FastLaneResponse()
    out.response, out.ends_inline = lane, lane.ended_inline
    transport.data.clear()
    out.push(LAST, last=True)
    assert bytes(transport.data) == b"%x\r\n%b\r\n0\r\n\r\n" % (len(LAST), LAST) and lane.ended == 1
