"""Config hot reload through POST /admin/reload, and the admin API's address check."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml

from gateway.config import Config, load_config
from infercdn.local import running_gateway
from gateway.state import OBSERVATIONS
from tests.conftest import SINGAPORE, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def _post(url: str, body: dict | None = None, ip: str | None = None) -> tuple[int, dict, dict]:
    headers = {"X-Forwarded-For": ip} if ip else {}
    async with aiohttp.ClientSession() as s, s.post(url, json={} if body is None else body, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


async def test_reload_swaps_pools_and_keeps_observations(tmp_path: Path, sim_factory, gateway_factory) -> None:
    eu, ap = await sim_factory(), await sim_factory()
    data = base_config({"eu-west": [eu.url]})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=str(path))
    app, base = gw.app, gw.url
    status, _, headers = await _post(base + "/v1/chat/completions", CHAT, SINGAPORE)
    assert (status, headers["x-infercdn-region"]) == (200, "eu-west")
    app[OBSERVATIONS].throttle("eu-west-0", 1000)  # some state the reload must keep

    data["pools"].append({"name": "ap-pool", "region": "ap-southeast", "models": ["tiny-chat"],
                          "endpoints": [{"id": "ap-0", "url": ap.url}]})
    path.write_text(yaml.safe_dump(data))
    status, answer, _ = await _post(base + "/admin/reload")
    assert status == 200 and answer["pools"] == 2 and answer["restart_needed_for"] == []
    status, _, headers = await _post(base + "/v1/chat/completions", CHAT, SINGAPORE)
    assert (status, headers["x-infercdn-region"]) == (200, "ap-southeast")
    assert app[OBSERVATIONS].view("eu-west-0").throttled_until is not None

    path.write_text("pools: [oops\n")
    status, answer, _ = await _post(base + "/admin/reload")
    assert status == 400 and "invalid YAML" in answer["error"]["message"]
    status, _, headers = await _post(base + "/v1/chat/completions", CHAT, SINGAPORE)
    assert (status, headers["x-infercdn-region"]) == (200, "ap-southeast")  # old snapshot kept


async def test_admin_api_only_from_admin_networks(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    data = base_config({"eu-west": [sim.url]})
    data["gateway"]["admin_networks"] = ["10.0.0.0/8"]
    gw = await gateway_factory(data)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/admin/observations") as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "forbidden"
        async with s.get(gw.url + "/v1/models") as r:
            assert r.status == 200


async def test_reload_keeps_local_endpoints_and_names_pools_that_need_a_restart(
        tmp_path: Path, geoip_reader) -> None:
    """A gateway with its local fleet (`infercdn up`): a reload passes the file through the same
    preparation as at start and keeps the simulators it started; a pool added with a `simulate`
    block gets none until a restart, and the answer says so."""
    data = base_config({})
    data["pools"] = [{"name": "eu-sim", "region": "eu-west", "models": ["tiny-chat"],
                      "simulate": {"endpoints": 2, "ttft_ms": 1, "itl_ms": 1, "rtt_ms": 0}}]
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    prepared: list[int] = []

    def prepare(cfg: Config) -> Config:  # as `up --engine vllm` rewrites the default
        prepared.append(len(cfg.pools))
        return cfg

    async with running_gateway(prepare(load_config(path)), "127.0.0.1", 0, prepare=prepare,
                               config_path=str(path), geoip_reader=geoip_reader) as (fleet, port):
        base = f"http://127.0.0.1:{port}"
        assert len(fleet.urls["eu-sim"]) == 2
        data["pools"].append({"name": "ap-sim", "region": "ap-southeast", "models": ["tiny-chat"],
                              "simulate": {"endpoints": 1}})
        path.write_text(yaml.safe_dump(data))
        status, answer, _ = await _post(base + "/admin/reload")
        assert status == 200
        assert (answer["pools"], answer["endpoints"], answer["not_started"]) == (2, 2, ["ap-sim"])
        assert prepared == [1, 2]
        status, _, headers = await _post(base + "/v1/chat/completions", CHAT, SINGAPORE)
        assert (status, headers["x-infercdn-region"]) == (200, "eu-west")  # ap-sim has no endpoint yet
