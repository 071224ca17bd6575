"""Runtime actions of the admin API: drain/undrain an endpoint or a pool, the topology, the
JSON-or-header rule for admin POSTs, and `infercdn admin` against a live gateway."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.state import OBSERVATIONS
from infercdn.commands import admin as admin_cli
from tests.conftest import LONDON, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ADMIN = {"X-Infercdn-Admin": "1"}


async def _post(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers or {}) as r:
        return r.status, await r.json()


async def _get(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        return await r.json()


async def _chat(base: str, n: int = 1) -> list[str]:
    """n short requests from London; the endpoint pool of each answer."""
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(base + "/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": LONDON}) as r:
                assert r.status == 200, await r.text()
                out.append(r.headers["x-infercdn-pool"])
    return out


def _endpoint(topo: dict[str, Any], eid: str) -> dict[str, Any]:
    return next(e for p in topo["pools"] for e in p["endpoints"] if e["id"] == eid)


async def test_drain_stops_new_requests_while_a_stream_in_flight_finishes(sim_factory, gateway_factory) -> None:
    slow, other = await sim_factory(itl_ms=30.0), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [slow.url, other.url]}))
    base = gw.url
    assert (await _post(base + "/admin/endpoints/eu-west-1/drain", headers=ADMIN))[0] == 200  # the stream lands on eu-west-0
    body = {**CHAT, "stream": True, "max_tokens": 40}
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/chat/completions", json=body,
                                                    headers={"X-Forwarded-For": LONDON}) as stream:
        assert stream.status == 200
        first = await stream.content.readline()  # the stream is under way
        assert first.startswith(b"data: ")
        status, answer = await _post(base + "/admin/endpoints/eu-west-0/drain", headers=ADMIN)
        assert status == 200 and answer == {"endpoint": "eu-west-0", "action": "drain", "drained": True,
                                            "state": "drained", "inflight": 1}
        await _post(base + "/admin/endpoints/eu-west-1/undrain", headers=ADMIN)
        before = other.stats.requests_total
        assert await _chat(base, 6) == ["eu-west-pool"] * 6
        assert other.stats.requests_total == before + 6 and slow.stats.requests_total == 1
        rest = await stream.read()
    assert rest.rstrip().endswith(b"data: [DONE]") and b'"error"' not in rest
    assert slow.stats.requests_completed == 1 and slow.stats.requests_cancelled == 0

    status, _ = await _post(base + "/admin/endpoints/eu-west-0/undrain", headers=ADMIN)
    assert status == 200
    topo = await _get(base + "/admin/topology")
    assert _endpoint(topo, "eu-west-0")["state"] == "healthy" and not _endpoint(topo, "eu-west-0")["drained"]


async def test_drains_survive_a_reload_until_undone_or_the_endpoint_leaves(
        tmp_path: Path, sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(), await sim_factory()
    data = base_config({"eu-west": [eu.url], "us-east": [us.url]})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=str(path))
    base = gw.url
    assert set(await _chat(base, 2)) == {"eu-west-pool"}
    assert (await _post(base + "/admin/endpoints/eu-west-0/drain", {}))[0] == 200  # a JSON body, no header
    assert set(await _chat(base, 2)) == {"us-east-pool"}

    status, _ = await _post(base + "/admin/reload", {})
    assert status == 200
    topo = await _get(base + "/admin/topology")
    assert _endpoint(topo, "eu-west-0")["drained"] and _endpoint(topo, "eu-west-0")["state"] == "drained"
    assert set(await _chat(base, 2)) == {"us-east-pool"}  # still drained after the reload

    pools = data["pools"]
    data["pools"] = [p for p in pools if p["name"] != "eu-west-pool"]
    path.write_text(yaml.safe_dump(data))
    assert (await _post(base + "/admin/reload", {}))[0] == 200  # eu-west-0 leaves the config ...
    data["pools"] = pools
    path.write_text(yaml.safe_dump(data))
    assert (await _post(base + "/admin/reload", {}))[0] == 200  # ... and comes back: not drained
    assert not _endpoint(await _get(base + "/admin/topology"), "eu-west-0")["drained"]


async def test_pool_drain_and_undrain(sim_factory, gateway_factory) -> None:
    eu, us = await sim_factory(), await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [eu.url], "us-east": [us.url]}))
    base = gw.url
    status, answer = await _post(base + "/admin/pools/eu-west-pool/drain", headers=ADMIN)
    assert status == 200 and answer["drained"] and answer["pool"] == "eu-west-pool"
    assert set(await _chat(base, 3)) == {"us-east-pool"}
    topo = await _get(base + "/admin/topology")
    pool = next(p for p in topo["pools"] if p["name"] == "eu-west-pool")
    assert pool["drained"] and pool["health"] == "drained"
    assert next(r for r in topo["regions"] if r["name"] == "eu-west")["health"] == "drained"
    async with aiohttp.ClientSession() as s, s.get(base + "/admin/plan", params={"model": "tiny-chat", "ip": LONDON}) as r:
        plan = await r.json()
    assert {"pool": "eu-west-pool", "endpoint": None, "reason": "draining"} in plan["rejected"]
    status, answer = await _post(base + "/admin/pools/eu-west-pool/undrain", headers=ADMIN)
    assert status == 200 and not answer["drained"]
    assert set(await _chat(base, 3)) == {"eu-west-pool"}


@pytest.mark.parametrize("path", ["/admin/endpoints/nowhere-0/drain", "/admin/pools/nowhere/undrain"])
async def test_unknown_names_are_404_in_openai_format(path: str, sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    status, answer = await _post(gw.url + path, headers=ADMIN)
    assert status == 404
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["code"] == "not_found" and "nowhere" in answer["error"]["message"]


async def test_admin_posts_need_json_or_the_admin_header(sim_factory, gateway_factory) -> None:
    """What a cross-site form can send (text/plain, urlencoded, multipart, nothing) is refused."""
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    url = gw.url + "/admin/endpoints/eu-west-0/drain"
    async with aiohttp.ClientSession() as s:
        for kwargs in ({"data": "x", "headers": {"Content-Type": "text/plain"}}, {"data": {"a": "b"}}, {}):
            async with s.post(url, **kwargs) as r:
                assert r.status == 415, kwargs
                assert (await r.json())["error"]["code"] == "admin_header_required"
        async with s.post(url, data="{oops", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
        async with s.post(url, data="[1]", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
        assert not _endpoint(await _get(gw.url + "/admin/topology"), "eu-west-0")["drained"]
        async with s.post(url, data="", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200  # an empty JSON body is fine: no form can send that type
        async with s.post(url.replace("/drain", "/undrain"), headers=ADMIN) as r:
            assert r.status == 200


async def test_admin_actions_and_the_fleet_page_only_from_admin_networks(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    data = base_config({"eu-west": [sim.url]})
    data["gateway"]["admin_networks"] = ["10.0.0.0/8"]
    gw = await gateway_factory(data)
    async with aiohttp.ClientSession() as s:
        for method, path in (("GET", "/admin/topology"), ("POST", "/admin/endpoints/eu-west-0/drain"),
                             ("GET", "/status"), ("GET", "/status/app.js"), ("GET", "/status/events")):
            async with s.request(method, gw.url + path, headers=ADMIN) as r:
                assert r.status == 403, path
    assert not gw.app[OBSERVATIONS].view("eu-west-0").drained


async def test_topology_reports_live_endpoint_state(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url, "http://127.0.0.1:9"]}))
    obs = gw.app[OBSERVATIONS]
    obs.record_probe("eu-west-1", False)
    obs.record_probe("eu-west-0", True, 12.5)
    topo = await _get(gw.url + "/admin/topology")
    assert topo["gateway"]["region"] == "eu-west"
    assert [r["name"] for r in topo["regions"]] == ["us-east", "eu-west", "ap-southeast"]
    assert next(r for r in topo["regions"] if r["name"] == "us-east")["health"] == "empty"
    pool = topo["pools"][0]
    assert pool["name"] == "eu-west-pool" and pool["health"] == "degraded" and pool["models"] == ["tiny-chat"]
    bad, good = _endpoint(topo, "eu-west-1"), _endpoint(topo, "eu-west-0")
    assert bad["state"] == "unhealthy" and not bad["healthy"]
    assert good["state"] == "healthy" and good["latency_ms"] is not None and good["inflight"] == 0
    assert set(good) >= {"running", "waiting", "kv_usage", "breaker", "ejected", "drained", "probe_draining"}


async def test_infercdn_admin_commands(sim_factory, gateway_factory, capsys) -> None:
    """The CLI against a live gateway (run in a thread: it blocks on urllib)."""
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url], "us-east": [sim.url]}))

    async def cli(*argv: str) -> tuple[int, str, str]:
        from infercdn.cli import build_parser

        args = build_parser(["admin", *argv]).parse_args(["admin", *argv])
        rc = await asyncio.to_thread(admin_cli.main, args)
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, _ = await cli("drain", "endpoint", "eu-west-0", "--gateway", gw.url)
    assert rc == 0 and "endpoint eu-west-0 drained" in out
    rc, out, _ = await cli("--gateway", gw.url, "drain", "pool", "us-east-pool")
    assert rc == 0 and "pool us-east-pool drained" in out
    rc, out, _ = await cli("topology", "--gateway", gw.url)
    assert rc == 0 and "region eu-west" in out and "drained" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("eu-west-0"))
    assert "drained" in line
    rc, out, _ = await cli("topology", "--json", "--gateway", gw.url)
    assert rc == 0 and _endpoint(json.loads(out), "eu-west-0")["drained"]
    rc, out, _ = await cli("undrain", "endpoint", "eu-west-0", "--gateway", gw.url)
    assert rc == 0 and "undrained" in out
    rc, _, err = await cli("undrain", "pool", "nowhere", "--gateway", gw.url)
    assert rc == 1 and "404" in err and "nowhere" in err
    rc, _, err = await cli("topology", "--gateway", "http://127.0.0.1:9")
    assert rc == 1 and "cannot reach gateway" in err


async def test_readiness_and_models_follow_operator_drains(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    async with aiohttp.ClientSession() as s:
        async def ready() -> tuple[int, list[str]]:
            async with s.get(gw.url + "/readyz") as r, s.get(gw.url + "/v1/models") as m:
                return r.status, [d["id"] for d in (await m.json())["data"]]

        assert await ready() == (200, ["tiny-chat"])
        await _post(gw.url + "/admin/pools/eu-west-pool/drain", headers=ADMIN)
        assert await ready() == (503, [])
        await _post(gw.url + "/admin/pools/eu-west-pool/undrain", headers=ADMIN)
        await _post(gw.url + "/admin/endpoints/eu-west-0/drain", headers=ADMIN)
        assert await ready() == (503, [])
        await _post(gw.url + "/admin/endpoints/eu-west-0/undrain", headers=ADMIN)
        assert await ready() == (200, ["tiny-chat"])


async def test_a_health_check_answering_draining_shows_and_stops_new_requests(sim_factory, gateway_factory) -> None:
    """A vLLM launcher announces its drain on its control port (503 "draining"): the endpoint is
    shown as draining (not merely unhealthy) and gets no new requests, until it says ready again."""
    from aiohttp import web

    answer = {"status": 503, "text": "draining"}

    async def health(_: web.Request) -> web.Response:
        return web.Response(**answer)

    from gateway.server import start_site

    control = web.Application()
    control.router.add_get("/health", health)
    runner, port = await start_site(control, "127.0.0.1", 0)
    try:
        stopping, other = await sim_factory(), await sim_factory()
        data = base_config({"eu-west": [stopping.url, other.url]})
        data["pools"][0]["endpoints"][0]["health_url"] = f"http://127.0.0.1:{port}/health"
        gw = await gateway_factory(data)

        async def state_becomes(want: str) -> None:
            async with asyncio.timeout(10):
                while _endpoint(await _get(gw.url + "/admin/topology"), "eu-west-0")["state"] != want:
                    await asyncio.sleep(0.05)

        await state_becomes("draining")
        assert _endpoint(await _get(gw.url + "/admin/topology"), "eu-west-0")["probe_draining"]
        await _chat(gw.url, 4)
        assert stopping.stats.requests_total == 0 and other.stats.requests_total == 4
        answer.update(status=200, text="ready")
        await state_becomes("healthy")
    finally:
        await runner.cleanup()


async def test_drains_are_exported_as_a_metric(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url, sim.url]}))
    line = 'infercdn_endpoint_drained{endpoint="eu-west-0",pool="eu-west-pool"} '

    async def metric() -> str:
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            text = await r.text()
        return next((x[len(line):] for x in text.splitlines() if x.startswith(line)), "")

    async def becomes(value: str) -> None:  # set by the next probe round (every 0.2 s here)
        async with asyncio.timeout(10):
            while await metric() != value:
                await asyncio.sleep(0.05)

    await becomes("0.0")
    await _post(gw.url + "/admin/endpoints/eu-west-0/drain", headers=ADMIN)
    await becomes("1.0")
    await _post(gw.url + "/admin/endpoints/eu-west-0/undrain", headers=ADMIN)
    await becomes("0.0")
    await _post(gw.url + "/admin/pools/eu-west-pool/drain", headers=ADMIN)
    await becomes("1.0")
