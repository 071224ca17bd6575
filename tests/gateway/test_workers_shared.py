"""``infercdn gateway --workers 2`` keeps one view of the fleet across its workers: an operator's
drain POSTed to one worker holds on all of them (and on a worker restarted later), and the
registry, the canary and DNS run once per host with every worker routing on what they found."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import LONDON
from tests.gateway.test_open_fleet import fleet_config, register  # noqa: F401 - the registrar fixture
from tests.gateway.test_shared_limits import redis_url  # noqa: F401 - a throwaway redis-server
from tests.gateway.test_workers import write_config
from tests.gateway.workers_fixture import BODY, WorkersGateway, by_worker, chat, workers_gateway

ADMIN = {"X-Infercdn-Admin": "1"}


async def per_worker(gw: WorkersGateway, path: str, pick: Any) -> dict[str, Any]:
    """GET ``path`` until both workers answered: worker -> ``pick(json)``."""
    async def call(session: aiohttp.ClientSession) -> tuple[str, Any]:
        async with session.get(gw.base + path) as r:
            return r.headers["x-infercdn-worker"], pick(await r.json())
    return await by_worker(gw.base, call)


async def until_every_worker(gw: WorkersGateway, path: str, pick: Any, want: Any, tries: int = 200) -> None:
    """Both workers answer ``want`` (bounded: ``tries`` rounds 50 ms apart)."""
    seen: dict[str, Any] = {}
    for _ in range(tries):
        seen = await per_worker(gw, path, pick)
        if seen == {"0": want, "1": want}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the workers answered {seen}, not {want}")


def endpoint_state(eid: str) -> Any:
    return lambda topo: next(e["state"] for p in topo["pools"] for e in p["endpoints"] if e["id"] == eid)


async def post(gw: WorkersGateway, path: str) -> tuple[str, dict[str, Any]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.post(gw.base + path, headers=ADMIN) as r:
            assert r.status == 200, await r.text()
            return r.headers["x-infercdn-worker"], await r.json()


async def spread(gw: WorkersGateway, n: int = 16) -> dict[str, int]:
    """``n`` chats from London on fresh connections; all must succeed; answers per worker."""
    per: dict[str, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(n):
            async with s.post(gw.base + "/v1/chat/completions", json=BODY, headers={"X-Forwarded-For": LONDON}) as r:
                await r.read()
                assert r.status == 200
                per[r.headers["x-infercdn-worker"]] = per.get(r.headers["x-infercdn-worker"], 0) + 1
    return per


async def test_a_drain_posted_to_one_worker_holds_on_every_worker_and_after_a_restart(
        tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    drained, kept = await sim_factory(), await sim_factory()
    config = tmp_path / "gw.yaml"
    write_config(config, geoip_db, {"eu-west": [drained.url, kept.url]})
    async with workers_gateway(config) as gw:
        await by_worker(gw.base, chat(gw.base, LONDON))  # both serve (and have health)
        answered, body = await post(gw, "/admin/endpoints/eu-west-0/drain")
        assert body["drained"] is True
        await until_every_worker(gw, "/admin/topology", endpoint_state("eu-west-0"), "drained")
        before = drained.stats.paths["/v1/chat/completions"]
        served = kept.stats.paths["/v1/chat/completions"]
        assert await by_worker(gw.base, chat(gw.base, LONDON)) == {"0": (200, "eu-west"), "1": (200, "eu-west")}
        per = await spread(gw)
        assert drained.stats.paths["/v1/chat/completions"] == before  # from neither worker
        assert kept.stats.paths["/v1/chat/completions"] >= served + 2 + sum(per.values())

        # the worker that took the POST dies: its successor gets the drain from the link
        victim = gw.pids[int(answered)]
        os.kill(victim, signal.SIGKILL)
        await gw.log_has(f"worker {answered} (pid {victim}) exited with -9")
        started = (await gw.log_has(f"worker {answered} started, pid", count=2))[-1]
        await gw.log_has(f"worker {answered} (pid {int(started.rsplit('pid ', 1)[1])}) serving")
        await until_every_worker(gw, "/admin/topology", endpoint_state("eu-west-0"), "drained")
        await by_worker(gw.base, chat(gw.base, LONDON))
        await spread(gw)
        assert drained.stats.paths["/v1/chat/completions"] == before

        # a reload of every worker (SIGHUP to the supervisor) keeps it, as a single gateway does
        gw.proc.send_signal(signal.SIGHUP)
        await gw.log_has("config reloaded from", count=2)
        await until_every_worker(gw, "/admin/topology", endpoint_state("eu-west-0"), "drained")

        # a pool drain from one worker, an undrain of the endpoint from whichever answers next
        await post(gw, "/admin/pools/eu-west-pool/drain")
        await until_every_worker(gw, "/admin/topology", lambda t: t["pools"][0]["drained"], True)
        await post(gw, "/admin/pools/eu-west-pool/undrain")
        await post(gw, "/admin/endpoints/eu-west-0/undrain")
        await until_every_worker(gw, "/admin/topology", endpoint_state("eu-west-0"), "healthy")
        await until_every_worker(gw, "/admin/topology", lambda t: t["pools"][0]["drained"], False)
        for _ in range(10):  # traffic comes back to it (the balancer spreads the pool's requests)
            await spread(gw, 4)
            if drained.stats.paths["/v1/chat/completions"] > before:
                break
        assert drained.stats.paths["/v1/chat/completions"] > before
        assert await gw.stop() == 0


async def test_one_registry_reader_and_one_canary_per_host(tmp_path: Path, geoip_db: Path, sim_factory,
                                                          register, redis_url: str) -> None:  # noqa: F811
    """Registry + canary under --workers 2: both workers route on the same registered endpoints;
    the impostor gets the canary requests of ONE prober and no client traffic from either worker;
    an unquarantine POSTed to any worker clears it on both."""
    reference, impostor = await sim_factory(), await sim_factory(model_seed=99)
    data = fleet_config(redis_url, {"acme": ["verified"], "shady": []}, canary={"interval_s": 60, "max_tokens": 6})
    data["geoip"] = {"database": str(geoip_db)}
    data["gateway"]["access_log"] = "off"
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(data))
    prompts = 2  # the canary's default prompts
    ref_id, imp_id = ("acme:" + reference.url.removeprefix("http://"), "shady:" + impostor.url.removeprefix("http://"))
    await register(reference, "acme", "us-east")
    async with workers_gateway(config) as gw:
        references = lambda c: sorted(r["from"] for r in c["references"].values())  # noqa: E731
        await until_every_worker(gw, "/admin/canary", references, [ref_id] * prompts)
        await register(impostor, "shady", "eu-west")  # nearest to London
        ids = lambda reg: sorted(e["id"] for p in reg["pools"] for e in p["endpoints"])  # noqa: E731
        await until_every_worker(gw, "/admin/registry", ids, sorted([ref_id, imp_id]))
        per = await spread(gw)  # held "canary_pending" or quarantined: never a client's
        verdict = lambda c: c["endpoints"].get(imp_id, {}).get("result")  # noqa: E731
        await until_every_worker(gw, "/admin/canary", verdict, "fail")
        await until_every_worker(gw, "/admin/topology", endpoint_state(imp_id), "quarantined")
        per2 = await spread(gw)
        assert set(per) | set(per2) == {"0", "1"}
        assert impostor.stats.paths.get("/v1/chat/completions", 0) == 0
        assert reference.stats.paths["/v1/chat/completions"] >= sum(per.values()) + sum(per2.values())
        # one canary: one /v1/models and one completion per prompt, once per 60 s (two would double it)
        assert impostor.stats.paths["/v1/models"] == 1
        assert impostor.stats.paths["/v1/completions"] == prompts
        assert reference.stats.paths["/v1/completions"] == prompts  # the reference, asked once per prompt
        assert impostor.stats.paths["/metrics"] >= 1  # the prober's load scrapes reach it (it serves none)

        # the prober dies: its successor starts from the host's verdicts, checks once, holds on
        os.kill(gw.pids[0], signal.SIGKILL)
        await gw.log_has(f"worker 0 (pid {gw.pids[0]}) exited with -9")
        started = (await gw.log_has("worker 0 started, pid", count=2))[-1]
        await gw.log_has(f"worker 0 (pid {int(started.rsplit('pid ', 1)[1])}) serving")
        await until_every_worker(gw, "/admin/topology", endpoint_state(imp_id), "quarantined")
        await spread(gw)
        for _ in range(200):  # the new prober's own first check (its schedule starts afresh)
            if impostor.stats.paths["/v1/completions"] >= 2 * prompts:
                break
            await asyncio.sleep(0.05)
        assert impostor.stats.paths["/v1/completions"] == 2 * prompts
        assert impostor.stats.paths.get("/v1/chat/completions", 0) == 0
        # the prober's second verdict is recorded (its requests arriving is not enough: an
        # unquarantine sent before the verdict would be overruled by it)
        checks = f'infercdn_canary_checks_total{{endpoint="{imp_id}",pool="shady@eu-west",result="fail"}}'
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(gw.base + "/metrics") as r:
                    line = next((x for x in (await r.text()).splitlines() if x.startswith(checks)), "")
                if line and float(line.rsplit(" ", 1)[1]) >= 2:
                    break
                await asyncio.sleep(0.05)
        assert line and float(line.rsplit(" ", 1)[1]) == 2, line
        await until_every_worker(gw, "/admin/canary", verdict, "fail")

        worker, body = await post(gw, f"/admin/endpoints/{imp_id}/unquarantine")
        assert body["cleared"] == "quarantined"
        await until_every_worker(gw, "/admin/topology", endpoint_state(imp_id), "healthy")
        reason = lambda c: c["endpoints"][imp_id]["reason"]  # noqa: E731
        await until_every_worker(gw, "/admin/canary", reason, "cleared by an operator")
        assert impostor.stats.paths["/v1/completions"] == 2 * prompts  # no extra check from either worker
        assert await gw.stop() == 0
