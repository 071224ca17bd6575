"""Shared fixtures: simulators and gateways started in-process on 127.0.0.1 port 0, and a
GeoIP test database written with mmdb-writer."""
from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import infercdn  # noqa: F401 - first: chooses the core's build (compiled when fresh) before routing/gateway load

from gateway.app import build_app
from gateway.config import Config, parse_config
from gateway.server import start_site
from tests.vllm_fixture import vllm_live, vllm_server  # noqa: F401 - one real vLLM per run, shared

REGIONS = [
    {"name": "us-east", "location": {"lat": 38.95, "lon": -77.45}, "jurisdiction": "us"},
    {"name": "eu-west", "location": {"lat": 50.11, "lon": 8.68}, "jurisdiction": "eu"},
    {"name": "ap-southeast", "location": {"lat": 1.35, "lon": 103.82}, "jurisdiction": "sg"},
]

# IPs the test GeoIP database places (see tests/geoip_fixture.py)
SINGAPORE, LONDON, US = "103.4.96.1", "81.2.69.142", "8.8.8.8"


def base_config(pools: dict[str, list[str]], **sections: Any) -> dict[str, Any]:
    """A gateway config (as data) in Frankfurt with one pool per region named in ``pools``."""
    data: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1", "port": 0, "location": {"lat": 50.11, "lon": 8.68}, "region": "eu-west"},
        "health": {"interval_s": 0.2, "timeout_s": 0.5, "rise": 1, "fall": 1},
        "load": {"scrape_interval_s": 0.2, "stale_s": 2.0},
        "retry": {"max_attempts": 4, "backoff_base_ms": 1, "backoff_max_ms": 5},
        "timeouts": {"connect_s": 0.5},
        "models": {"*": {"ttft_deadline_s": 5, "stall_timeout_s": 5, "total_deadline_s": 30}},
        "regions": copy.deepcopy(REGIONS),
        "pools": [
            {"name": f"{region}-pool", "region": region, "models": ["tiny-chat"],
             "endpoints": [{"id": f"{region}-{i}", "url": url} for i, url in enumerate(urls)]}
            for region, urls in pools.items()
        ],
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


@pytest.fixture(scope="session")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.geoip_fixture import write_test_city_db

    return Path(write_test_city_db(tmp_path_factory.mktemp("geoip") / "test-city.mmdb"))


@pytest.fixture(scope="session")
def geoip_reader(geoip_db: Path) -> Any:
    import geoip2.database

    reader = geoip2.database.Reader(str(geoip_db))
    yield reader
    reader.close()


@pytest.fixture
async def sim_factory() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await sim_factory(**SimConfig fields)`` → a started Simulator (``.url``, ``.stats``)."""
    from worker.sim import SimConfig, Simulator

    started: list[Any] = []

    async def start(**kwargs: Any) -> Any:
        kwargs.setdefault("model", "tiny-chat")
        kwargs.setdefault("ttft_ms", 1.0)
        kwargs.setdefault("itl_ms", 1.0)
        sim = Simulator(SimConfig(**kwargs))
        await sim.start(host="127.0.0.1", port=0)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


@dataclass
class RunningGateway:
    app: web.Application
    runner: web.AppRunner
    port: int
    config: Config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def gateway_factory(geoip_reader: Any) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    """``await gateway_factory(config_data)`` → a gateway on 127.0.0.1 port 0 using the test GeoIP DB."""
    running: list[RunningGateway] = []

    async def start(data: dict[str, Any], **kwargs: Any) -> RunningGateway:
        cfg = parse_config(data, "<test>")
        app = build_app(cfg, geoip_reader=geoip_reader, **kwargs)
        runner, port = await start_site(app, "127.0.0.1", 0)
        gw = RunningGateway(app, runner, port, cfg)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        await gw.runner.cleanup()
