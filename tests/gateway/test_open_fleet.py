"""The open fleet on a real redis-server: simulators register themselves (signed, with leases),
gateways route to them without a config change, trust comes from the gateway's config, and the
canary quarantines an impostor."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from routing.announce import token_hash
from tests.conftest import LONDON, REGIONS, SINGAPORE, US, base_config
from tests.gateway.test_shared_limits import redis_url  # noqa: F401 - a throwaway redis-server
from worker.register import Registrar, Registration

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (apt-get install redis-server)")

TOKENS = {"acme": "acme-secret", "cheap": "cheap-secret", "shady": "shady-secret"}
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}
LEASE_S = 1.0


def fleet_config(redis: str, providers: dict[str, list[str]] | None = None, static: list[dict] | None = None,
                 **sections: Any) -> dict[str, Any]:
    """A gateway in Frankfurt with no static pools (unless ``static``), reading the registry."""
    providers = providers if providers is not None else {"acme": ["verified"]}
    data = base_config({}, **sections)
    data["pools"] = static or []
    data["registry"] = {"redis_url": redis, "poll_s": 0.1, "timeout_s": 1.0,
                        "providers": [{"name": n, "token_sha256": token_hash(TOKENS[n]), "tags": tags}
                                      for n, tags in providers.items()]}
    return data


@pytest.fixture
async def register(redis_url: str) -> AsyncIterator[Callable[..., Any]]:  # noqa: F811
    """``await register(sim, provider, region, price=None, token=None)`` → a renewing Registrar;
    ``kill(registrar)`` stops its renewals without withdrawing (a dead worker)."""
    tasks: dict[int, asyncio.Task[None]] = {}
    made: list[Registrar] = []

    async def start(sim: Any, provider: str, region: str, price: float | None = None,
                    token: str | None = None) -> Registrar:
        reg = Registration(redis_url, provider, region, token or TOKENS[provider], price, LEASE_S)
        r = Registrar.build(reg, sim.url, (sim.config.model,), sim.config.max_model_len)
        assert await r.renew()
        tasks[id(r)] = asyncio.create_task(r.run())
        made.append(r)
        return r

    yield start
    for task in tasks.values():
        task.cancel()
    for r in made:
        await r.withdraw()
        await r.close()


def kill(registrar: Registrar, tasks_owner: Any = None) -> None:
    registrar.withdrawn = True  # renewals stop; the key stays until its lease lapses


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> None:
    """Poll an admin view until ``predicate()`` (async) holds; TimeoutError otherwise."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(step)


async def registered_ids(gw: Any) -> set[str]:
    data = await get_json(gw.url + "/admin/registry")
    return {e["id"] for p in data["pools"] for e in p["endpoints"]}


async def chat(s: aiohttp.ClientSession, gw: Any, ip: str, key: str | None = None) -> int:
    headers = {"X-Forwarded-For": ip, **({"Authorization": f"Bearer {key}"} if key else {})}
    async with s.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
        await r.read()
        return r.status


async def test_three_simulators_register_and_receive_traffic(sim_factory, gateway_factory, register,
                                                             redis_url: str) -> None:  # noqa: F811
    sims = {region["name"]: await sim_factory() for region in REGIONS}
    gw = await gateway_factory(fleet_config(redis_url))
    for region, sim in sims.items():
        await register(sim, "acme", region, price=1.0)
    await until(lambda: _has(gw, 3))
    async with aiohttp.ClientSession() as s:
        for ip in (US, LONDON, SINGAPORE):
            assert [await chat(s, gw, ip) for _ in range(3)] == [200] * 3
    assert {r: sim.stats.requests_total > 0 for r, sim in sims.items()} == {r: True for r in sims}
    plan = await get_json(gw.url + f"/admin/plan?model=tiny-chat&ip={SINGAPORE}")
    assert plan["candidates"][0]["pool"] == "acme@ap-southeast"


async def _has(gw: Any, n: int) -> bool:
    return len(await registered_ids(gw)) == n


async def test_static_pools_work_beside_the_registry(sim_factory, gateway_factory, register,
                                                     redis_url: str) -> None:  # noqa: F811
    static, joined = await sim_factory(), await sim_factory()
    pool = {"name": "static-us", "region": "us-east", "models": ["tiny-chat"],
            "endpoints": [{"id": "static-0", "url": static.url}]}
    gw = await gateway_factory(fleet_config(redis_url, static=[pool]))
    async with aiohttp.ClientSession() as s:
        assert await chat(s, gw, LONDON) == 200  # the static pool alone
        await register(joined, "acme", "eu-west")
        await until(lambda: _has(gw, 1))
        assert await chat(s, gw, LONDON) == 200
    assert static.stats.requests_total == 1 and joined.stats.requests_total == 1  # London: the nearer one
    obs = await get_json(gw.url + "/admin/observations")
    assert {"static-0", "acme:" + joined.url.removeprefix("http://")} <= set(obs)


async def test_a_dead_worker_lapses_with_no_failed_request(sim_factory, gateway_factory, register,
                                                           redis_url: str) -> None:  # noqa: F811
    a, b = await sim_factory(), await sim_factory()
    gw = await gateway_factory(fleet_config(redis_url))
    ra = await register(a, "acme", "eu-west")
    await register(b, "acme", "eu-west")
    await until(lambda: _has(gw, 2))
    statuses: list[int] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            statuses.append(await chat(s, gw, LONDON))
        kill(ra)
        await a.stop()  # the worker dies without a word
        gone = asyncio.get_running_loop().time()
        while await _has(gw, 2):
            statuses.append(await chat(s, gw, LONDON))
            assert asyncio.get_running_loop().time() - gone < LEASE_S * 4, "the lapsed lease was not noticed"
        for _ in range(4):
            statuses.append(await chat(s, gw, LONDON))
    assert statuses == [200] * len(statuses)
    assert await registered_ids(gw) == {"acme:" + b.url.removeprefix("http://")}


async def test_a_provider_without_a_valid_token_is_refused(sim_factory, gateway_factory, register,
                                                           redis_url: str) -> None:  # noqa: F811
    good, forged, stranger = await sim_factory(), await sim_factory(), await sim_factory()
    gw = await gateway_factory(fleet_config(redis_url))
    await register(good, "acme", "us-east")
    await register(forged, "acme", "eu-west", token="guessed")  # claims acme's name, wrong token
    TOKENS["nobody"] = "whatever"
    await register(stranger, "nobody", "eu-west")  # not in the gateway's config
    await until(lambda: _has(gw, 1))

    async def refused() -> bool:
        data = await get_json(gw.url + "/admin/registry")
        return sorted(r["reason"] for r in data["refused"]) == ["bad_signature", "unknown_provider"]
    await until(refused)
    async with aiohttp.ClientSession() as s:
        assert [await chat(s, gw, LONDON) for _ in range(4)] == [200] * 4
        async with s.get(gw.url + "/metrics") as r:
            text = await r.text()
    assert good.stats.requests_total == 4 and forged.stats.requests_total == stranger.stats.requests_total == 0
    assert 'infercdn_registry_refused{reason="bad_signature"} 1.0' in text


async def test_a_verified_tenant_never_reaches_an_unverified_provider(sim_factory, gateway_factory, register,
                                                                      redis_url: str) -> None:  # noqa: F811
    far_verified, near_unverified = await sim_factory(), await sim_factory()
    data = fleet_config(redis_url, {"acme": ["verified"], "cheap": []})
    data["auth"] = {"tenants": [{"name": "bank", "api_keys": ["sk-bank"], "required_tags": ["verified"]}]}
    # the region itself carries the tag: a registered pool must not inherit it
    data["regions"][1]["tags"] = ["verified"]
    gw = await gateway_factory(data)
    await register(far_verified, "acme", "us-east")
    await register(near_unverified, "cheap", "eu-west")
    await until(lambda: _has(gw, 2))
    async with aiohttp.ClientSession() as s:
        assert [await chat(s, gw, LONDON, "sk-bank") for _ in range(6)] == [200] * 6
        assert near_unverified.stats.requests_total == 0 and far_verified.stats.requests_total == 6
        assert await chat(s, gw, LONDON) == 200  # anyone else: the nearer pool
    assert near_unverified.stats.requests_total == 1


async def test_cost_policy_picks_the_cheapest_verified_pool_within_slack(sim_factory, gateway_factory, register,
                                                                         redis_url: str) -> None:  # noqa: F811
    near_dear, far_cheap, cheapest_unverified = await sim_factory(), await sim_factory(), await sim_factory()
    data = fleet_config(redis_url, {"acme": ["verified"], "cheap": []})
    data["auth"] = {"tenants": [{"name": "thrifty", "api_keys": ["sk-t"], "required_tags": ["verified"],
                                 "policy": "cost", "cost_slack_ms": 500}]}
    gw = await gateway_factory(data)
    await register(near_dear, "acme", "eu-west", price=2.0)
    await register(far_cheap, "acme", "us-east", price=0.5)
    await register(cheapest_unverified, "cheap", "eu-west", price=0.1)
    await until(lambda: _has(gw, 3))
    async with aiohttp.ClientSession() as s:
        assert [await chat(s, gw, LONDON, "sk-t") for _ in range(3)] == [200] * 3
        assert await chat(s, gw, LONDON) == 200  # the default policy: nearest first
    assert far_cheap.stats.requests_total == 3 and cheapest_unverified.stats.requests_total == 0
    assert near_dear.stats.requests_total + cheapest_unverified.stats.requests_total == 1


async def test_an_impostor_is_quarantined_and_gets_no_client_traffic(sim_factory, gateway_factory, register,
                                                                     redis_url: str) -> None:  # noqa: F811
    reference, honest = await sim_factory(), await sim_factory()
    impostor = await sim_factory(model_seed=99)  # other weights, same model name
    data = fleet_config(redis_url, {"acme": ["verified"], "cheap": [], "shady": []},
                        canary={"interval_s": 0.5, "max_tokens": 6})
    gw = await gateway_factory(data)
    await register(reference, "acme", "us-east")
    await register(honest, "cheap", "ap-southeast")
    await register(impostor, "shady", "eu-west")  # nearest to London
    imp_id, honest_id = "shady:" + impostor.url.removeprefix("http://"), "cheap:" + honest.url.removeprefix("http://")
    await until(lambda: _has(gw, 3))

    async def judged() -> bool:
        v = (await get_json(gw.url + "/admin/canary"))["endpoints"]
        return v.get(imp_id, {}).get("result") == "fail" and v.get(honest_id, {}).get("result") == "pass"
    async with aiohttp.ClientSession() as s:
        while not await judged():  # clients keep coming while the canary works
            assert await chat(s, gw, LONDON) == 200
            await asyncio.sleep(0.05)
        assert [await chat(s, gw, LONDON) for _ in range(5)] == [200] * 5
        async with s.get(gw.url + "/metrics") as r:
            text = await r.text()
        obs = await get_json(gw.url + "/admin/observations")
        assert obs[imp_id]["hold"] == "quarantined" and obs[honest_id]["hold"] is None
        plan = await get_json(gw.url + f"/admin/plan?model=tiny-chat&ip={LONDON}")
        assert {"pool": "shady@eu-west", "endpoint": None, "reason": "quarantined"} in plan["rejected"]
        topology = await get_json(gw.url + "/admin/topology")
        states = {e["id"]: e["state"] for p in topology["pools"] for e in p["endpoints"]}
        assert states[imp_id] == "quarantined" and states[honest_id] == "healthy"
        canary = (await get_json(gw.url + "/admin/canary"))["endpoints"][imp_id]
        assert canary["evidence"]["check"] == "tokens" and canary["evidence"]["prompts"]
        async with s.post(gw.url + f"/admin/endpoints/{imp_id}/unquarantine") as r:
            assert r.status == 415  # a form post from a browser cannot clear it
        async with s.post(gw.url + f"/admin/endpoints/{imp_id}/unquarantine", json={}) as r:
            assert r.status == 200 and (await r.json())["cleared"] == "quarantined"
    assert f'infercdn_endpoint_quarantined{{endpoint="{imp_id}",pool="shady@eu-west"}} 1.0' in text
    # the impostor saw canary requests only: /v1/completions through the gateway never reached it
    client_attempts = [line for line in text.splitlines()
                       if line.startswith("infercdn_upstream_attempts_total") and imp_id in line]
    assert client_attempts == []
    assert impostor.stats.paths["/v1/chat/completions"] == 0 and honest.stats.paths["/v1/completions"] > 0


async def test_a_quarantined_endpoint_comes_back_when_it_passes_again(sim_factory, gateway_factory, register,
                                                                      redis_url: str) -> None:  # noqa: F811
    reference, impostor = await sim_factory(), await sim_factory(model_seed=99)
    gw = await gateway_factory(fleet_config(redis_url, {"acme": ["verified"], "shady": []},
                                            canary={"interval_s": 0.3, "max_tokens": 4}))
    await register(reference, "acme", "us-east")
    await register(impostor, "shady", "eu-west")
    imp_id = "shady:" + impostor.url.removeprefix("http://")

    def verdict(want: str) -> Callable[[], Any]:
        async def check() -> bool:
            return (await get_json(gw.url + "/admin/canary"))["endpoints"].get(imp_id, {}).get("result") == want
        return check
    await until(verdict("fail"))
    impostor.core.config = replace(impostor.core.config, model_seed=0)  # now it serves the real weights
    await until(verdict("pass"))

    async def nearest_first() -> bool:  # its health and latency settle on a loaded machine too
        plan = await get_json(gw.url + f"/admin/plan?model=tiny-chat&ip={LONDON}")
        return bool(plan["candidates"]) and plan["candidates"][0]["pool"] == "shady@eu-west"
    await until(nearest_first)
    async with aiohttp.ClientSession() as s:
        assert await chat(s, gw, LONDON) == 200
    assert impostor.stats.paths["/v1/chat/completions"] == 1  # the nearest pool again


async def test_the_sim_command_registers_and_withdraws_on_stop(redis_url: str) -> None:  # noqa: F811
    import redis.asyncio as aioredis

    env = {**os.environ, "INFERCDN_PROVIDER_TOKEN": "acme-secret"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infercdn.cli", "worker", "sim", "--port", "0", "--register", redis_url,
        "--provider", "acme", "--region", "eu-west", "--price", "0.3", "--lease", "30",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            url = (await proc.stdout.readline()).decode().strip()
            keys: list[bytes] = []
            while not keys:
                keys = await client.keys("infercdn:fleet:acme:*")
                await asyncio.sleep(0.05)
        assert keys == [f"infercdn:fleet:acme:{url.removeprefix('http://')}".encode()]
        assert 0 < await client.ttl(keys[0]) <= 30
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
        assert await client.keys("infercdn:fleet:*") == []  # withdrawn at once, not after 30 s
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        await client.aclose()



async def test_registry_down_keeps_the_last_fleet(sim_factory, gateway_factory, register, caplog,
                                                  redis_url: str) -> None:  # noqa: F811
    import redis.asyncio as aioredis

    sim = await sim_factory()
    gw = await gateway_factory(fleet_config(redis_url))
    await register(sim, "acme", "eu-west")
    await until(lambda: _has(gw, 1))
    client = aioredis.Redis.from_url(redis_url)
    with contextlib.suppress(Exception):
        await client.shutdown(nosave=True)  # Redis goes away
    await client.aclose()

    async def errors_counted() -> bool:
        return (await get_json(gw.url + "/admin/registry"))["errors"] > 0
    await until(errors_counted)
    async with aiohttp.ClientSession() as s:
        assert [await chat(s, gw, LONDON) for _ in range(3)] == [200] * 3
        async with s.get(gw.url + "/metrics") as r:
            assert 'infercdn_discovery_errors_total{source="registry"}' in await r.text()
    assert await _has(gw, 1) and sim.stats.requests_total == 3
    assert any("keeping the last fleet seen (1 endpoints)" in r.getMessage() for r in caplog.records)


async def test_revoking_a_provider_by_reload_takes_its_traffic_at_once(sim_factory, gateway_factory, register,
                                                                       tmp_path, redis_url: str) -> None:  # noqa: F811
    import yaml

    near, far = await sim_factory(), await sim_factory()
    data = fleet_config(redis_url, {"acme": ["verified"], "cheap": []})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=path)
    await register(near, "cheap", "eu-west")
    await register(far, "acme", "us-east")
    await until(lambda: _has(gw, 2))
    data["registry"]["providers"][1]["revoked"] = True
    path.write_text(yaml.safe_dump(data))
    async with aiohttp.ClientSession() as s:
        assert await chat(s, gw, LONDON) == 200
        async with s.post(gw.url + "/admin/reload", json={}) as r:
            assert r.status == 200
        assert [await chat(s, gw, LONDON) for _ in range(3)] == [200] * 3  # no poll needed in between
    assert near.stats.requests_total == 1 and far.stats.requests_total == 3


async def test_an_endpoint_whose_models_list_lacks_the_registered_name_is_quarantined(
        sim_factory, gateway_factory, register, redis_url: str) -> None:  # noqa: F811
    reference, liar = await sim_factory(), await sim_factory(model="small-model")
    gw = await gateway_factory(fleet_config(redis_url, {"acme": ["verified"], "shady": []},
                                            canary={"interval_s": 0.3, "max_tokens": 4}))
    await register(reference, "acme", "us-east")
    r = Registrar.build(Registration(redis_url, "shady", "eu-west", TOKENS["shady"], lease_s=LEASE_S),
                        liar.url, ("tiny-chat",), 2048)  # claims a model it does not serve
    assert await r.renew()
    liar_id = "shady:" + liar.url.removeprefix("http://")
    try:
        async def caught() -> bool:
            v = (await get_json(gw.url + "/admin/canary"))["endpoints"].get(liar_id, {})
            return v.get("result") == "fail"
        await until(caught)
        evidence = (await get_json(gw.url + "/admin/canary"))["endpoints"][liar_id]["evidence"]
        assert evidence == {"check": "v1_models", "expected": "tiny-chat", "listed": ["small-model"],
                            "model": "tiny-chat"}
    finally:
        await r.withdraw()
        await r.close()
