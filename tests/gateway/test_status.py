"""The fleet page's server side: its files, the event stream (content, bounds, drain) and the
per-region traffic it reports."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from gateway.forward.exchange import Exchange, Tried
from gateway.state import DRAINING, STATUS
from gateway.traffic import RATE_S, WINDOW_S, Traffic, record_exchange
from routing.outcome import Outcome
from routing.plan import Candidate, ScoreComponents
from routing.topology import Endpoint, Pool
from tests.gateway.forward import fakes
from tests.conftest import LONDON, base_config
from tests.routing.helpers import FakeClock
from tests.gateway.test_resume import CHAT as STREAM_CHAT
from tests.gateway.test_resume import stream


async def _events(url: str, n: int) -> list[dict]:
    """The first ``n`` documents of /status/events."""
    docs: list[dict] = []
    async with aiohttp.ClientSession() as s, s.get(url + "/status/events") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(10):
            async for line in r.content:
                if line.startswith(b"data: "):
                    docs.append(orjson.loads(line[6:]))
                    if len(docs) == n:
                        break
    return docs


async def test_page_script_and_outline_are_served(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/status") as r:
            html = await r.text()
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            assert '<script src="/status/app.js">' in html and 'id="plan-form"' in html
        async with s.get(gw.url + "/status/app.js") as r:
            assert r.status == 200 and "EventSource(\"/status/events\")" in await r.text()
        async with s.get(gw.url + "/status/world.json") as r:
            world = await r.json()
            assert len(world["rings"]) > 50 and all(-180 <= lon <= 180 and -90 <= lat <= 90
                                                    for ring in world["rings"] for lon, lat in ring)


async def test_events_carry_topology_and_traffic_per_region(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    gw.app[STATUS].interval_s = 0.05
    docs, _, _ = await stream(gw.url, "/v1/chat/completions", STREAM_CHAT, LONDON)
    doc = (await _events(gw.url, 2))[-1]
    assert doc["models"] == ["tiny-chat"] and doc["gateway"]["region"] == "eu-west" and not doc["draining"]
    assert [r["name"] for r in doc["regions"]] == ["us-east", "eu-west", "ap-southeast"]
    assert {p["name"] for p in doc["pools"]} == {"eu-west-pool", "us-east-pool"}
    eu_traffic = doc["traffic"]["eu-west"]
    completion = [d["usage"] for d in docs if d.get("usage")][0]["completion_tokens"]
    assert eu_traffic["requests_1m"] == 1 and eu_traffic["errors_1m"] == 0
    assert eu_traffic["tokens_per_s"] == round(completion / RATE_S, 1) and completion > 0
    assert len(eu_traffic["series"]) == WINDOW_S and sum(eu_traffic["series"]) == 1
    assert doc["traffic"]["us-east"]["requests_1m"] == 0 and doc["traffic"]["ap-southeast"]["requests_1m"] == 0


async def test_a_resumed_stream_is_counted_where_it_was_resumed(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(fault="cut_after:tokens=5"), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    await stream(gw.url, "/v1/chat/completions", STREAM_CHAT, LONDON)
    traffic = (await _events(gw.url, 1))[0]["traffic"]
    assert traffic["us-east"]["resumes_1m"] == 1 and traffic["us-east"]["requests_1m"] == 1
    assert traffic["eu-west"]["failed_attempts_1m"] == 1 and traffic["eu-west"]["requests_1m"] == 0


async def test_event_streams_are_bounded_and_end_when_the_gateway_drains(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    feed = gw.app[STATUS]
    feed.max_clients, feed.interval_s = 1, 0.05
    async with aiohttp.ClientSession() as s:
        first = await s.get(gw.url + "/status/events")
        assert first.status == 200
        await first.content.readline()
        async with s.get(gw.url + "/status/events") as second:
            assert second.status == 503 and (await second.json())["error"]["code"] == "too_many_streams"
        first.close()  # the client leaves: its slot is freed
        async with asyncio.timeout(5):
            while feed.clients:
                await asyncio.sleep(0.01)
        async with s.get(gw.url + "/status/events") as third:
            assert third.status == 200
            await third.content.readline()
            gw.app[DRAINING].since = time.monotonic()
            async with asyncio.timeout(5):
                rest = await third.read()  # ends on its own
            assert rest.count(b"data: ") <= 2 and b'"draining":true' in rest


def test_traffic_windows_with_a_fake_clock() -> None:
    clock = FakeClock(5000.0)
    traffic = Traffic(clock)
    traffic.record("eu-west", ok=True, tokens=40)
    clock.advance(1)
    traffic.record("eu-west", ok=False, failover=True, resumes=1)
    traffic.failed_attempt("us-east")
    snap = traffic.snapshot(["eu-west", "us-east", "ap-southeast"])
    eu = snap["eu-west"]
    assert (eu["requests_1m"], eu["errors_1m"], eu["failovers_1m"], eu["resumes_1m"]) == (2, 1, 1, 1)
    assert eu["requests_per_s"] == 2 / RATE_S and eu["tokens_per_s"] == 40 / RATE_S
    assert eu["series"][-2:] == [1, 1] and len(eu["series"]) == WINDOW_S
    assert snap["us-east"]["failed_attempts_1m"] == 1 and snap["ap-southeast"]["requests_1m"] == 0
    clock.advance(RATE_S)  # out of the rate window, still in the minute
    eu = traffic.snapshot([])["eu-west"]
    assert eu["requests_per_s"] == 0 and eu["requests_1m"] == 2
    clock.advance(WINDOW_S)
    assert traffic.snapshot([])["eu-west"]["requests_1m"] == 0
    traffic.record("eu-west", ok=True)
    assert len(traffic._regions["eu-west"]) == 1  # old buckets are dropped, memory stays bounded


async def test_record_exchange_counts_where_requests_were_served_and_where_attempts_failed() -> None:
    clock = FakeClock()
    traffic = Traffic(clock)

    def cand(region: str) -> Candidate:
        ep = Endpoint(f"{region}-0", "http://127.0.0.1:9", f"{region}-a")
        return Candidate(Pool(f"{region}-a", region, {"tiny-chat": "tiny-chat"}, (ep,)), ep, "tiny-chat", 0.0,
                         ScoreComponents(0.0, 0.0, 0.0, 0.0))

    ex = fakes.exchange()
    ex.tried = [Tried(cand("eu-west"), Outcome.RESET, "reset", "tiny-chat")]
    ex.served_by, ex.status, ex.usage = cand("us-east"), "200", {"completion_tokens": 7}
    record_exchange(traffic, ex)
    failed = fakes.exchange()
    failed.status = "503"
    failed.tried = [Tried(cand("ap-southeast"), Outcome.CONNECT_ERROR, "refused", "tiny-chat")]
    record_exchange(traffic, failed)
    nowhere = fakes.exchange()
    nowhere.status = "503"
    record_exchange(traffic, nowhere)
    snap = traffic.snapshot([])
    assert snap["us-east"]["requests_1m"] == 1 and snap["us-east"]["failovers_1m"] == 1
    assert snap["us-east"]["tokens_per_s"] == 7 / RATE_S
    assert snap["eu-west"]["failed_attempts_1m"] == 1 and snap["eu-west"]["requests_1m"] == 0
    assert snap["ap-southeast"]["errors_1m"] == 1 and snap["ap-southeast"]["failed_attempts_1m"] == 1
    assert set(snap) == {"us-east", "eu-west", "ap-southeast"}
