"""Every fault kind behaves as specified, and the control endpoint changes behaviour mid-run."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from worker.sim import SimConfig, Simulator
from worker.sim.testing import parse_sse, read_stalled, running_sim, stream_text

CHAT = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 8}
STREAM = {**CHAT, "stream": True}
COMPLETIONS = "/v1/completions"
CHATS = "/v1/chat/completions"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_sim(ttft_ms=0, itl_ms=0, seed=3) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def call(http: aiohttp.ClientSession, url: str, body: Any = STREAM) -> tuple[int, bytes, dict[str, str]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def read_until_broken(resp: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    got = b""
    try:
        async for line in resp.content:
            got += line
    except aiohttp.ClientError as exc:
        return got, exc
    return got, None


def error_of(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)["error"]


async def test_429_with_and_without_retry_after(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("429")
    status, raw, headers = await call(http, sim.url + CHATS)
    assert status == 429 and "Retry-After" not in headers and error_of(raw)["code"] == 429
    sim.set_fault("429:retry_after=2")
    status, _, headers = await call(http, sim.url + CHATS)
    assert status == 429 and headers["Retry-After"] == "2"
    assert sim.stats.faults["429"] == 2 and sim.stats.requests_failed == 2


async def test_500_once_then_healthy(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("500_once")
    assert (await call(http, sim.url + CHATS))[0] == 500
    assert (await call(http, sim.url + CHATS))[0] == 200
    assert sim.stats.faults["500_once"] == 1


async def test_503_hits_generation_and_health(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("503")
    status, raw, _ = await call(http, sim.url + COMPLETIONS, {"prompt": "hi"})
    assert status == 503 and error_of(raw)["type"] == "ServiceUnavailableError"
    async with http.get(f"{sim.url}/health") as resp:
        assert resp.status == 503
    assert sim.stats.faults["health:503"] == 1


async def test_per_request_faults_leave_health_alone(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("503:times=1")
    async with http.get(f"{sim.url}/health") as resp:
        assert resp.status == 200
    assert (await call(http, sim.url + CHATS))[0] == 503
    assert (await call(http, sim.url + CHATS))[0] == 200


async def test_reset_before_headers(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("reset_before_headers")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(http, sim.url + CHATS)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await http.get(f"{sim.url}/health")
    assert sim.stats.faults["reset_before_headers"] == 1 and sim.stats.requests_failed == 1


async def test_hang_never_answers_until_the_client_leaves(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("hang")
    task = asyncio.create_task(call(http, sim.url + CHATS))
    await sim.wait_for(lambda s: s.faults["hang"] == 1)
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await sim.wait_for(lambda s: s.requests_cancelled == 1)


async def test_stop_ends_hanging_requests(http: aiohttp.ClientSession) -> None:
    sim = Simulator(SimConfig(fault="hang"))
    await sim.start()
    task = asyncio.create_task(call(http, sim.url + CHATS))
    health = asyncio.create_task(http.get(f"{sim.url}/health"))
    await sim.wait_for(lambda s: s.faults["hang"] == 1 and s.faults["health:hang"] == 1)
    await asyncio.wait_for(sim.stop(), 5)
    for outcome in await asyncio.wait_for(asyncio.gather(task, health, return_exceptions=True), 5):
        assert isinstance(outcome, aiohttp.ClientError)


async def test_slow_first_token(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("slow_first_token:seconds=0.2")
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.post(sim.url + CHATS, json=STREAM) as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        assert loop.time() - start >= 0.2
        _, done = parse_sse(first + await resp.read())
    assert done and sim.stats.requests_completed == 1 and sim.stats.requests_failed == 0


@pytest.mark.parametrize("tokens_per_chunk", [1, 2])
async def test_cut_after_tokens(http: aiohttp.ClientSession, tokens_per_chunk: int) -> None:
    async with running_sim(ttft_ms=0, itl_ms=0, tokens_per_chunk=tokens_per_chunk, fault="cut_after:tokens=3") as sim:
        body = {**STREAM, "return_token_ids": True, "stream_options": {"include_usage": True}}
        async with http.post(sim.url + CHATS, json=body) as resp:
            assert resp.status == 200
            got, exc = await read_until_broken(resp)
        assert isinstance(exc, aiohttp.ClientPayloadError)
        events, done = parse_sse(got)
        assert not done and all(e["choices"] for e in events)
        assert sum(len(e["choices"][0].get("token_ids", [])) for e in events) == 3
        assert sim.stats.tokens_sent == 3 and sim.stats.faults["cut_after"] == 1
        assert sim.stats.requests_failed == 1 and sim.stats.requests_completed == 0


async def test_cut_after_on_a_non_stream_request(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("cut_after:tokens=3")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(http, sim.url + CHATS, CHAT)


async def test_stall_after_tokens(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("stall_after:tokens=2")
    resp = await http.post(sim.url + COMPLETIONS, json={"prompt": "hi", "stream": True, "max_tokens": 8})
    await sim.wait_for(lambda s: s.tokens_sent == 2)
    assert len(await read_stalled(resp, 2)) == 2
    resp.close()
    await sim.wait_for(lambda s: s.requests_cancelled == 1 and s.running == 0)
    assert sim.stats.tokens_sent == 2


async def test_malformed_event_in_an_otherwise_fine_stream(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, clean, _ = await call(http, sim.url + CHATS)
    sim.set_fault("malformed_event")
    status, raw, _ = await call(http, sim.url + CHATS)
    assert status == 200
    with pytest.raises(ValueError):
        parse_sse(raw)
    blocks = raw.split(b"\n\n")
    bad = [b for b in blocks if b.startswith(b"data: {") and not _is_json(b[6:])]
    assert len(bad) == 1 and blocks[-2] == b"data: [DONE]"
    good, _ = parse_sse(b"\n\n".join(b for b in blocks if b not in bad))
    assert stream_text(good) == stream_text(parse_sse(clean)[0])


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


async def test_no_done(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("no_done")
    status, raw, _ = await call(http, sim.url + CHATS, {**STREAM, "stream_options": {"include_usage": True}})
    events, done = parse_sse(raw)
    assert status == 200 and not done and events[-1]["usage"]["completion_tokens"] == 8


async def test_context_length_fault(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("context_length")
    status, raw, _ = await call(http, sim.url + CHATS)
    err = error_of(raw)
    assert status == 400 and "maximum context length" in err["message"]
    assert (err["type"], err["code"]) == ("BadRequestError", 400)
    sim.set_fault("context_length:openai=1")
    err = error_of((await call(http, sim.url + CHATS))[1])
    assert (err["code"], err["param"]) == ("context_length_exceeded", "messages")


async def test_content_policy_fault(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("content_policy")
    status, raw, _ = await call(http, sim.url + COMPLETIONS, {"prompt": "hi", "stream": True})
    assert status == 400 and error_of(raw)["code"] == "content_policy_violation"


async def test_flap_follows_the_injected_clock(http: aiohttp.ClientSession) -> None:
    now = [0.0]
    sim = Simulator(SimConfig(ttft_ms=0, itl_ms=0), clock=lambda: now[0])
    async with sim:
        sim.set_fault("flap:down_s=5")
        assert (await call(http, sim.url + CHATS))[0] == 503
        async with http.get(f"{sim.url}/health") as resp:
            assert resp.status == 503
        now[0] = 5.0
        assert (await call(http, sim.url + CHATS))[0] == 200
        async with http.get(f"{sim.url}/health") as resp:
            assert resp.status == 200


async def test_reject_continuation(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault("reject_continuation")
    cont = {**CHAT, "add_generation_prompt": False, "continue_final_message": True,
            "messages": CHAT["messages"] + [{"role": "assistant", "content": " so far"}]}
    assert (await call(http, sim.url + CHATS, cont))[0] == 400
    assert (await call(http, sim.url + COMPLETIONS, {"prompt": [1, 2, 3]}))[0] == 400
    assert (await call(http, sim.url + CHATS, CHAT))[0] == 200
    assert (await call(http, sim.url + COMPLETIONS, {"prompt": "hi"}))[0] == 200
    assert sim.stats.faults["reject_continuation"] == 2


async def test_probabilistic_faults_repeat_with_the_seed(http: aiohttp.ClientSession) -> None:
    async def statuses() -> list[int]:
        async with running_sim(ttft_ms=0, itl_ms=0, seed=11, fault="503:prob=0.5") as sim:
            return [(await call(http, sim.url + CHATS, CHAT))[0] for _ in range(12)]

    first = await statuses()
    assert first == await statuses() and {200, 503} == set(first)


async def test_control_endpoint_changes_behaviour_mid_run(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async def set_fault(value: Any) -> tuple[int, Any]:
        async with http.post(f"{sim.url}/sim/fault", json={"fault": value}) as resp:
            return resp.status, await resp.json()

    assert (await call(http, sim.url + CHATS))[0] == 200
    assert await set_fault("503:retry_after=1") == (200, {"fault": "503:retry_after=1"})
    status, _, headers = await call(http, sim.url + CHATS)
    assert status == 503 and headers["Retry-After"] == "1"
    async with http.get(f"{sim.url}/sim/fault") as resp:
        assert await resp.json() == {"fault": "503:retry_after=1"}
    assert await set_fault(None) == (200, {"fault": None})
    assert (await call(http, sim.url + CHATS))[0] == 200
    status, body = await set_fault("bogus")
    assert status == 400 and "unknown fault kind" in body["error"]["message"]
    async with http.get(f"{sim.url}/sim/stats") as resp:
        stats = await resp.json()
    assert stats["faults"] == {"503": 1} and stats["requests_completed"] == 2
    assert stats["requests_total"] == 3 and stats["paths"][CHATS] == 3


async def test_rtt_delays_every_response() -> None:
    async with running_sim(rtt_ms=150) as sim, aiohttp.ClientSession() as http:
        loop = asyncio.get_running_loop()
        for path in ("/health", "/metrics"):
            start = loop.time()
            async with http.get(sim.url + path) as resp:
                assert resp.status == 200
            assert loop.time() - start >= 0.15
