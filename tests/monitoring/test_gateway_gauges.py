"""The gauges the alerts read: healthy endpoints per region (0 for a region whose endpoints all
fail their health checks) and the GeoIP database's build time."""
from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.conftest import base_config
from tests.gateway.test_failover import dead_url


async def _gauges(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    out = {f"region:{m[1]}": float(m[2])
           for m in re.finditer(r'infercdn_region_healthy_endpoints\{region="([^"]+)"\} (\S+)', text)}
    build = re.search(r"^infercdn_geoip_build_timestamp_seconds (\S+)$", text, re.M)
    if build:
        out["geoip"] = float(build[1])
    return out


async def test_region_healthy_endpoints_counts_usable_endpoints_per_region(sim_factory, gateway_factory) -> None:
    eu = [await sim_factory(), await sim_factory()]
    gw = await gateway_factory(base_config({"eu-west": [eu[0].url, eu[1].url], "us-east": [dead_url()]}))
    want = {"region:eu-west": 2.0, "region:us-east": 0.0}
    async with asyncio.timeout(10):  # health rounds every 0.2 s, fall after 1 failure
        while {k: v for k, v in (await _gauges(gw.url)).items() if k.startswith("region:")} != want:
            await asyncio.sleep(0.05)
    await eu[0].stop()
    async with asyncio.timeout(10):
        while (await _gauges(gw.url)).get("region:eu-west") != 1.0:
            await asyncio.sleep(0.05)
    assert (await _gauges(gw.url))["geoip"] > 1e9  # the test database's build time (Unix seconds)
