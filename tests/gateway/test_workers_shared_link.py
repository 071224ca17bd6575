"""What the workers of a host share over their link, in one process: gateway apps joined to a
real supervisor hub (gateway/workers.py), each with its own DNS stand-in, observations and
traffic, as ``gateway/worker_proc.py`` joins them."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin import topology
from gateway.app import build_app
from gateway.canary import clear
from gateway.config import load_config, parse_config
from gateway.host_link import HostLink
from gateway.host_share import DrainBook, peer_inflight, share_drain, shared_drains, shared_traffic
from gateway.snapshot import observation_params
from gateway.state import CANARY, CANARY_SHARE, HOST_LINK, OBSERVATIONS, SNAPSHOT, TRAFFIC, build_topology
from gateway.traffic import Traffic
from gateway.workers import Supervisor, WorkerSpec
from routing.observations import Observations
from tests.conftest import base_config
from tests.gateway.test_dns_endpoints import StandInResolver, dns_config


@contextlib.asynccontextmanager
async def host(tmp_path: Path, workers: int = 3) -> AsyncIterator[Callable[..., Any]]:
    """``await join(index, data, resolver=None)`` → a started app linked as worker ``index``."""
    hub_path = str(tmp_path / "hub.sock")
    sup = Supervisor(workers, WorkerSpec("c.yaml", "l.yaml", "127.0.0.1", 1, hub_path), tmp_path, load_config(None))
    hub = await asyncio.start_unix_server(sup._link, hub_path)
    runners: list[web.AppRunner] = []

    async def join(index: int, data: dict[str, Any], resolver: Any = None) -> web.Application:
        link = await HostLink.connect(hub_path, index)
        app = build_app(parse_config(data), resolver=resolver)
        app[HOST_LINK] = link
        app.cleanup_ctx.append(shared_drains)
        app.cleanup_ctx.append(shared_traffic(workers, interval_s=0.02))
        app.cleanup_ctx.append(link.context)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        return app

    try:
        yield join
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        hub.close()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def ids(app: web.Application) -> set[str]:
    return set(app[SNAPSHOT].current.topology.endpoints)


async def test_dns_is_resolved_by_the_prober_and_every_worker_routes_the_same_ids(tmp_path: Path) -> None:
    data = dns_config(8000)
    prober_dns, follower_dns, late_dns = (StandInResolver(["127.0.0.1"]), StandInResolver(["127.0.0.9"]),
                                          StandInResolver(["127.0.0.8"]))
    async with host(tmp_path) as join:
        prober, follower = await join(0, data, prober_dns), await join(1, data, follower_dns)
        await until(lambda: ids(follower) == ids(prober) == {"svc@127.0.0.1"})
        prober_dns.answer = ["127.0.0.2", "127.0.0.1"]  # the service scaled out
        want = {"svc@127.0.0.1", "svc@127.0.0.2"}
        await until(lambda: ids(follower) == ids(prober) == want)
        late = await join(2, data, late_dns)  # a worker that (re)starts: the last resolution, replayed
        await until(lambda: ids(late) == want)
        url = late[SNAPSHOT].current.topology.endpoints["svc@127.0.0.2"].url
        assert url == "http://127.0.0.2:8000"
        assert prober_dns.calls and follower_dns.calls == [] and late_dns.calls == []  # one resolver per host


def _topology(pools: dict[str, list[str]]) -> Any:
    return build_topology(parse_config(base_config(pools)))


def _book(me: int, pools: dict[str, list[str]]) -> DrainBook:
    cfg = parse_config(base_config(pools))
    obs = Observations(observation_params(cfg), lambda: 0.0)
    topo = build_topology(cfg)
    obs.sync(topo)
    book = DrainBook(me, obs)
    book.on_topology(topo)
    return book


def test_drain_books_merge_concurrent_changes_the_same_way_everywhere() -> None:
    pools = {"eu-west": ["http://a", "http://b"]}
    one, two = _book(0, pools), _book(1, pools)
    one.obs.drain("eu-west-0")
    one.note("endpoint", "eu-west-0", True)  # two operators at once, on two workers
    two.obs.drain("eu-west-1")
    two.note("endpoint", "eu-west-1", True)
    sent_one, sent_two = one.rows(), two.rows()
    one.merge(sent_two)
    two.merge(sent_one)
    for book in (one, two):  # both drains hold on both
        assert [book.obs.view(e).drained for e in ("eu-west-0", "eu-west-1")] == [True, True]
    one.obs.drain("eu-west-0", False)
    one.note("endpoint", "eu-west-0", False)  # undrained here while drained (again) there
    two.note("endpoint", "eu-west-0", True)
    sent_one, sent_two = one.rows(), two.rows()
    one.merge(sent_two)
    two.merge(sent_one)
    assert one.rows() == two.rows()
    assert one.obs.view("eu-west-0").drained is two.obs.view("eu-west-0").drained is True  # worker 1 wins the tie
    one.merge(sent_one[:1])  # a stale copy (the link's replay) changes nothing
    assert one.rows() == two.rows()


def test_a_drain_of_an_endpoint_not_routed_yet_applies_when_it_appears_and_ends_when_it_leaves() -> None:
    book = _book(1, {"eu-west": ["http://a"]})
    book.merge([["endpoint", "eu-west-1", True, 3, 0], ["pool", "us-east-pool", True, 4, 0]])
    assert book.obs.view("eu-west-1").drained is False  # not known here yet
    grown = _topology({"eu-west": ["http://a", "http://b"], "us-east": ["http://c"]})
    book.obs.sync(grown)
    book.on_topology(grown)
    assert book.obs.view("eu-west-1").drained and book.obs.drained_pools == {"us-east-pool"}
    shrunk = _topology({"eu-west": ["http://a"]})
    book.obs.sync(shrunk)
    book.on_topology(shrunk)
    assert book.rows() == []  # as a single gateway forgets the drain of an endpoint that left
    book.obs.sync(grown)
    book.on_topology(grown)
    assert not book.obs.view("eu-west-1").drained


async def test_drains_traffic_and_in_flight_reach_every_worker(tmp_path: Path) -> None:
    data = base_config({"eu-west": ["http://127.0.0.1:9"], "us-east": ["http://127.0.0.1:9"]})
    async with host(tmp_path) as join:
        first, second = await join(0, data), await join(1, data)
        first[OBSERVATIONS].drain("eu-west-0")
        share_drain(first, "endpoint", "eu-west-0", True)
        first[OBSERVATIONS].drain_pool("us-east-pool")
        share_drain(first, "pool", "us-east-pool", True)
        await until(lambda: second[OBSERVATIONS].view("eu-west-0").drained
                    and second[OBSERVATIONS].drained_pools == {"us-east-pool"})
        late = await join(2, data)  # started later: the book from the replay
        await until(lambda: late[OBSERVATIONS].view("eu-west-0").drained
                    and late[OBSERVATIONS].drained_pools == {"us-east-pool"})

        first[TRAFFIC].record("eu-west", ok=True, tokens=7)
        second[TRAFFIC].record("eu-west", ok=False)
        first[OBSERVATIONS].acquire("us-east-0")
        totals = lambda app: app[TRAFFIC].snapshot(["eu-west"])["eu-west"]  # noqa: E731
        for app in (first, second, late):
            await until(lambda app=app: totals(app)["requests_1m"] == 2 and totals(app)["errors_1m"] == 1)
            assert totals(app)["tokens_per_s"] == 0.7
        await until(lambda: peer_inflight(second) == {"us-east-0": 1})
        pools = topology(second[SNAPSHOT].current, second[OBSERVATIONS], peer_inflight(second))["pools"]
        assert [p["inflight"] for p in pools] == [0, 1]
        first[OBSERVATIONS].release("us-east-0")
        await until(lambda: peer_inflight(second) == {})


def test_traffic_adds_the_peers_buckets_second_by_second() -> None:
    now = [100.4]
    mine, theirs = Traffic(lambda: now[0]), Traffic(lambda: now[0])
    mine.record("eu-west", ok=True, tokens=5)
    theirs.record("eu-west", ok=True, tokens=3, failover=True)
    theirs.record("us-east", ok=False)
    mine.peers = {1: theirs.window()}
    now[0] = 101.2
    snap = mine.snapshot(["eu-west"])
    assert snap["eu-west"]["requests_1m"] == 2 and snap["eu-west"]["failovers_1m"] == 1
    assert snap["eu-west"]["series"][-2:] == [2, 0] and snap["us-east"]["errors_1m"] == 1
    now[0] = 100.4 + 60
    assert theirs.window() == {}  # a minute later: nothing left to tell


async def test_canary_verdicts_follow_the_prober_and_a_clear_is_never_replayed_stale(tmp_path: Path) -> None:
    """The prober's quarantine holds on every worker; an unquarantine on another worker reaches
    the prober; a worker started after a new quarantine is not handed the old clear."""
    data = base_config({"eu-west": ["http://127.0.0.1:9"]}, canary={"interval_s": 600})
    async with host(tmp_path) as join:
        prober, follower = await join(0, data), await join(1, data)
        canary = prober[CANARY_SHARE].canary
        topo = prober[SNAPSHOT].current.topology
        pool, ep = topo.pools[0], topo.endpoints["eu-west-0"]
        canary._decide(pool, ep, {"check": "tokens"})  # as a failed check does
        prober[CANARY_SHARE].tell()
        await until(lambda: follower[OBSERVATIONS].held("eu-west-0") == "quarantined")
        assert follower[CANARY].verdicts["eu-west-0"].evidence == {"check": "tokens"}
        assert clear(follower, "eu-west-0") == "quarantined"  # POST /admin/.../unquarantine there
        await until(lambda: prober[OBSERVATIONS].held("eu-west-0") is None)
        assert prober[CANARY].verdicts["eu-west-0"].reason == "cleared by an operator"
        canary._decide(pool, ep, {"check": "model_field"})  # caught again later
        prober[CANARY_SHARE].tell()
        await until(lambda: follower[OBSERVATIONS].held("eu-west-0") == "quarantined")
        late = await join(2, data)
        await until(lambda: late[HOST_LINK].replayed.is_set())
        assert late[OBSERVATIONS].held("eu-west-0") == "quarantined"  # not the replay of the first clear
        assert late[CANARY].verdicts["eu-west-0"].evidence == {"check": "model_field"}
