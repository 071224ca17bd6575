"""DNS endpoints (``pools[].endpoints[].dns_refresh_s``): every address of the host becomes an
endpoint, added and removed without a reload; those that stay keep their observations; a failed
look-up keeps the last addresses.  The resolver is a stand-in the test controls."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import pytest

from gateway.discovery import Discovered, dns_targets, with_host
from gateway.config import parse_config
from gateway.state import OBSERVATIONS, SNAPSHOT
from routing.topology import Endpoint
from tests.conftest import LONDON, base_config
from worker.sim import SimConfig, Simulator


class StandInResolver:
    """Answers what the test says; every call is recorded and sets ``called``."""

    def __init__(self, answer: Sequence[str] | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, int]] = []
        self.called = asyncio.Event()

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        self.called.set()
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


def dns_config(port: int) -> dict:
    data = base_config({"eu-west": []})
    data["pools"][0]["endpoints"] = [{"id": "svc", "url": f"http://pool.example.internal:{port}/v1",
                                      "health_url": f"http://pool.example.internal:{port}/health",
                                      "dns_refresh_s": 0.05}]
    return data


async def endpoint_ids(gw) -> set[str]:  # type: ignore[no-untyped-def]
    return set(gw.app[SNAPSHOT].current.topology.endpoints)


async def wait_ids(gw, expected: set[str], timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while await endpoint_ids(gw) != expected:
            await asyncio.sleep(0.02)


async def test_addresses_come_and_go_without_reload(gateway_factory) -> None:
    a = Simulator(SimConfig(ttft_ms=1, itl_ms=1))
    await a.start("127.0.0.1", 0)
    port = int(a.url.rsplit(":", 1)[1])
    b = Simulator(SimConfig(ttft_ms=1, itl_ms=1))
    try:
        await b.start("127.0.0.2", port)  # same port on another loopback address
    except OSError:
        await a.stop()
        pytest.skip("127.0.0.2 is not usable here")
    resolver = StandInResolver(["127.0.0.1"])
    try:
        gw = await gateway_factory(dns_config(port), resolver=resolver)
        await wait_ids(gw, {"svc@127.0.0.1"})
        ep = gw.app[SNAPSHOT].current.topology.endpoints["svc@127.0.0.1"]
        assert ep.url == f"http://127.0.0.1:{port}" and ep.health_url == f"http://127.0.0.1:{port}/health"
        assert resolver.calls[0] == ("pool.example.internal", port)
        obs = gw.app[OBSERVATIONS]
        kept = obs._eps["svc@127.0.0.1"]
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/completions", json={"model": "tiny-chat", "prompt": "x", "max_tokens": 1},
                              headers={"X-Forwarded-For": LONDON}) as r:
                assert r.status == 200

            resolver.answer = ["127.0.0.2", "127.0.0.1"]
            await wait_ids(gw, {"svc@127.0.0.1", "svc@127.0.0.2"})
            assert obs._eps["svc@127.0.0.1"] is kept  # the observations of the one that stayed

            resolver.answer = OSError("SERVFAIL")
            resolver.called.clear()
            await asyncio.wait_for(resolver.called.wait(), 5)  # a failed look-up has run
            assert await endpoint_ids(gw) == {"svc@127.0.0.1", "svc@127.0.0.2"}  # the last addresses stay
            async with s.get(gw.url + "/metrics") as r:
                assert 'infercdn_discovery_errors_total{source="dns"}' in await r.text()

            resolver.answer = ["127.0.0.2"]
            await wait_ids(gw, {"svc@127.0.0.2"})
            for _ in range(3):
                async with s.post(gw.url + "/v1/completions",
                                  json={"model": "tiny-chat", "prompt": "x", "max_tokens": 1}) as r:
                    assert r.status == 200
        assert a.stats.requests_total == 1 and b.stats.requests_total == 3
    finally:
        await a.stop()
        await b.stop()


async def test_before_the_first_answer_the_host_name_is_used(gateway_factory) -> None:
    resolver = StandInResolver(OSError("no answer yet"))
    gw = await gateway_factory(dns_config(9), resolver=resolver)
    await asyncio.wait_for(resolver.called.wait(), 5)
    assert await endpoint_ids(gw) == {"svc"}


def test_targets_skip_ip_literals_and_endpoints_without_refresh() -> None:
    data = base_config({"eu-west": ["http://10.0.0.5:8000", "http://fleet.internal:8000"]})
    data["pools"][0]["endpoints"][0]["dns_refresh_s"] = 5
    data["pools"][0]["endpoints"][1]["dns_refresh_s"] = 5
    data["pools"][0]["endpoints"].append({"id": "plain", "url": "http://other.internal"})
    assert dns_targets(parse_config(data)) == [("eu-west-1", "fleet.internal", 8000, 5.0)]


def test_expand_replaces_the_host_in_url_and_matching_health_url() -> None:
    found = Discovered(dns={"e": ("10.0.0.1", "fd00::2")})
    ep = Endpoint("e", "https://svc.internal:8443", "p", 1.0, "https://svc.internal:9000/health")
    out = found.expand(ep, refresh=True)
    assert [(x.id, x.url, x.health_url) for x in out] == [
        ("e@10.0.0.1", "https://10.0.0.1:8443", "https://10.0.0.1:9000/health"),
        ("e@fd00::2", "https://[fd00::2]:8443", "https://[fd00::2]:9000/health")]
    assert found.expand(ep, refresh=False) == [ep]
    assert with_host("http://elsewhere:9/health", "10.0.0.1", "http://svc.internal") == "http://elsewhere:9/health"


def test_dns_refresh_must_be_positive() -> None:
    from gateway.config import ConfigError

    data = base_config({"eu-west": ["http://fleet.internal:8000"]})
    data["pools"][0]["endpoints"][0]["dns_refresh_s"] = 0
    with pytest.raises(ConfigError, match=r"pools\[0\]\.endpoints\[0\]\.dns_refresh_s"):
        parse_config(data)
