"""Failover before the first byte, client location trust, and cancellation."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import LONDON, SINGAPORE, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def dead_url() -> str:
    """A URL on which nothing listens (a port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def post(url: str, body: dict, ip: str | None = None) -> tuple[int, dict, dict]:
    headers = {"X-Forwarded-For": ip} if ip else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            return r.status, await r.json(), dict(r.headers)


async def test_dead_region_fails_over_to_next_nearest_without_errors(sim_factory, gateway_factory) -> None:
    us, eu = await sim_factory(), await sim_factory()
    gw = await gateway_factory(base_config({"ap-southeast": [dead_url(), dead_url()], "eu-west": [eu.url],
                                            "us-east": [us.url]},
                                           outlier={"consecutive_failures": 1, "max_ejected_percent": 100}))
    results = [await post(gw.url, CHAT, SINGAPORE) for _ in range(5)]
    assert [status for status, _, _ in results] == [200] * 5
    # Singapore's next nearest region from these three is eu-west (10,300 km vs 15,500 km)
    assert {h["x-infercdn-region"] for _, _, h in results} == {"eu-west"}
    first_attempts = int(results[0][2]["x-infercdn-attempts"])
    assert first_attempts == 3  # both ap-southeast endpoints refused, then eu-west answered
    # once detected (ejected / unhealthy), later requests go straight to eu-west
    assert int(results[-1][2]["x-infercdn-attempts"]) == 1
    assert us.stats.requests_total == 0


async def test_all_dead_is_a_503_counting_the_attempts_without_naming_endpoints(gateway_factory) -> None:
    gw = await gateway_factory(base_config({"eu-west": [dead_url()], "us-east": [dead_url()]}))
    status, body, headers = await post(gw.url, CHAT)
    assert status == 503
    assert body["error"]["type"] == "service_unavailable_error"
    assert "2 attempt(s)" in body["error"]["message"]
    # internal endpoint ids and upstream error text stay in the log and the admin API
    assert "eu-west-0" not in body["error"]["message"] and "connect" not in body["error"]["message"]
    assert headers["x-infercdn-attempts"] == "2"


async def test_forwarded_for_ignored_from_untrusted_peers(sim_factory, gateway_factory) -> None:
    sims = {r: await sim_factory() for r in ("us-east", "eu-west", "ap-southeast")}
    data = base_config({r: [s.url] for r, s in sims.items()})
    data["gateway"]["trusted_proxies"] = ["10.0.0.0/8"]  # loopback no longer trusted
    gw = await gateway_factory(data)
    _, _, headers = await post(gw.url, CHAT, SINGAPORE)
    # the peer (127.0.0.1) is private: located at the gateway's own place, Frankfurt
    assert headers["x-infercdn-region"] == "eu-west"


async def test_client_disconnect_cancels_upstream_generation(sim_factory, gateway_factory) -> None:
    sim = await sim_factory(itl_ms=5.0)
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    body = {**CHAT, "max_tokens": 2000, "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body,
                                headers={"X-Forwarded-For": LONDON}) as resp:
            assert resp.status == 200
            seen = 0
            async for _ in resp.content.iter_any():
                seen += 1
                if seen >= 5:
                    break
            resp.close()  # the client leaves mid-stream
    async with asyncio.timeout(5):
        while sim.stats.requests_cancelled < 1:
            await asyncio.sleep(0.01)
    sent = sim.stats.tokens_sent
    await asyncio.sleep(0.1)  # generation must have stopped: nothing more is sent
    assert sim.stats.tokens_sent == sent
    assert sent < 2000


async def test_stream_is_relayed_unchanged(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    body = {**CHAT, "stream": True, "max_tokens": 6, "temperature": 0, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as session:
        async with session.post(sim.url + "/v1/chat/completions", json=body) as r:
            direct = await r.read()
        async with session.post(gw.url + "/v1/chat/completions", json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            relayed = await r.read()

    def events(raw: bytes) -> list[bytes]:
        out = []
        for event in raw.split(b"\n\n"):
            if event.startswith(b"data: {"):
                doc = orjson.loads(event[6:])
                doc.pop("id", None)
                doc.pop("created", None)
                out.append(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
            elif event:
                out.append(event)
        return out

    assert events(relayed) == events(direct)
    assert relayed.rstrip().endswith(b"data: [DONE]")


async def test_prefix_affinity_keeps_a_conversation_on_one_endpoint(sim_factory, gateway_factory) -> None:
    sims = [await sim_factory() for _ in range(3)]
    data = base_config({"eu-west": [s.url for s in sims]}, routing={"balancer": "prefix_affinity"})
    gw = await gateway_factory(data)
    for turn in range(6):
        status, _, _ = await post(gw.url, {**CHAT, "messages": [{"role": "system", "content": "You are a pirate."},
                                                                {"role": "user", "content": "Arr"}]}, LONDON)
        assert status == 200
    assert sorted(s.stats.requests_total for s in sims) == [0, 0, 6]


async def test_client_closing_right_after_done_is_a_success_not_an_error(
        sim_factory, gateway_factory, monkeypatch, caplog) -> None:
    """Clients (wrk, SDKs) may close as soon as they read [DONE], before the chunked terminator:
    the answer was delivered, so no traceback is logged and the request counts as served."""
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    real_eof = web.StreamResponse.write_eof

    async def client_gone_first(self: web.StreamResponse, data: bytes = b"") -> None:
        if self._req is not None and self._req.transport is not None and self.status == 200:
            self._req.transport.close()  # as if the client's FIN arrived between [DONE] and the end
        await real_eof(self, data)

    monkeypatch.setattr(web.StreamResponse, "write_eof", client_gone_first)
    caplog.set_level(logging.INFO)
    body = {**CHAT, "max_tokens": 8, "stream": True}
    seen = b""
    async with aiohttp.ClientSession() as session:
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async with session.post(gw.url + "/v1/chat/completions", json=body,
                                    headers={"X-Forwarded-For": LONDON}) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_any():
                    seen += chunk
    assert seen.rstrip().endswith(b"data: [DONE]")
    monkeypatch.undo()
    metrics = await _metrics(gw.url)
    assert 'infercdn_requests_total{model="tiny-chat",region="eu-west",status="200"} 1.0' in metrics
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("hedged", [False, True])
async def test_client_leaving_while_waiting_for_the_first_token(sim_factory, gateway_factory, caplog,
                                                                hedged: bool) -> None:
    """A client that leaves after a keep-alive comment, before any token: the attempt is cancelled
    upstream and nothing is logged as an error (the walk and the hedged race alike)."""
    sim = await sim_factory(ttft_ms=3000.0)
    models = {"*": {"ttft_deadline_s": 10, "hedge": {"enabled": hedged, "after_ms": 5000}}}
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"keepalive_comment_s": 0.05},
                                           models=models))
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                                headers={"X-Forwarded-For": LONDON}) as resp:
            assert resp.status == 200
            assert (await resp.content.readuntil(b"\n\n")).startswith(b":")  # a keep-alive comment
            resp.close()
    async with asyncio.timeout(5):
        while sim.stats.requests_cancelled < 1:
            await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        while 'infercdn_client_disconnects_total{model="tiny-chat"} 1.0' not in await _metrics(gw.url):
            await asyncio.sleep(0.02)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


async def test_connect_timeout_is_named_with_the_time_it_took(gateway_factory, caplog) -> None:
    """An endpoint that does not complete the TCP handshake (its accept queue is full, so the
    kernel drops the SYN) is left after timeouts.connect_s, and the log says so, not the
    (longer) first-token deadline."""
    caplog.set_level(logging.INFO, logger="infercdn.proxy")
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.create_connection(full.getsockname(), timeout=1)]  # the one slot listen(0) has
        gw = await gateway_factory(base_config({"eu-west": [f"http://127.0.0.1:{full.getsockname()[1]}"]},
                                               timeouts={"connect_s": 0.2},
                                               models={"*": {"ttft_deadline_s": 30, "non_stream": "passthrough"}}))
        status, body, _ = await post(gw.url, {**CHAT, "max_tokens": 2}, LONDON)
        for f in fillers:
            f.close()
    assert status == 503
    assert "1 attempt(s)" in body["error"]["message"]
    assert "eu-west-0 (eu-west): no connect within 0.2" in caplog.text, caplog.text  # the log names it
