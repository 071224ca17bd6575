"""The bench's Python floor (bench/pyrelay.py) relays what it is a yardstick for: JSON answers
whole, streams event by event to [DONE], over kept-alive connections to each upstream in turn."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from bench.pyrelay import start

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
        "ignore_eos": True}


async def test_json_answers_and_streams_go_through_to_each_upstream_in_turn(sim_factory: Any) -> None:
    sims = [await sim_factory(itl_ms=0.0, ttft_ms=0.0) for _ in range(2)]
    server = await start(0, [s.url for s in sims])
    url = "http://127.0.0.1:%d/v1/chat/completions" % server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(url, json=CHAT) as resp:
                    assert resp.status == 200
                    doc = await resp.json()
                assert doc["object"] == "chat.completion" and doc["usage"]["completion_tokens"] == 5
            async with http.post(url, json={**CHAT, "stream": True}) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
                raw = await resp.read()
        events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
        assert events[-1] == b"[DONE]"
        texts = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
        assert len([t for t in texts if t]) == 5
        assert [s.stats.requests_completed for s in sims] == [2, 1]  # in turn, from the first
    finally:
        server.close()
        await server.wait_closed()


async def test_assembling_it_answers_a_non_stream_request_from_the_upstream_stream(sim_factory: Any) -> None:
    sim = await sim_factory(itl_ms=0.0, ttft_ms=0.0)
    server = await start(0, [sim.url], assemble=True)
    url = "http://127.0.0.1:%d/v1/chat/completions" % server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={**CHAT, "seed": 7}) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
                doc = await resp.json()
            async with http.post(sim.url + "/v1/chat/completions", json={**CHAT, "seed": 7}) as resp:
                direct = await resp.json()  # the same seed: the same text as the pool's own answer
            async with http.post(url, json={**CHAT, "stream": True}) as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"  # streams still relayed
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        assert doc["object"] == "chat.completion" and doc["choices"][0]["finish_reason"] == "length"
        assert doc["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"] != ""
        assert doc["id"].startswith("chatcmpl-") and doc["model"] == "tiny-chat"
        # built from the events, not the pool's own non-stream answer relayed (which has more fields)
        assert "service_tier" in direct and "service_tier" not in doc
    finally:
        server.close()
        await server.wait_closed()
