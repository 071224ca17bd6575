"""The compose demo end to end: up with its own ports, a Singapore client served from
ap-southeast by both gateway replicas, the demo tenant's limits kept in Redis, Prometheus
scraping every gateway and pool; then down."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.deploy import engine
from tests.deploy.conftest import TAG

pytestmark = pytest.mark.timeout(600)

COMPOSE_FILE = engine.ROOT / "deploy" / "compose" / "docker-compose.yml"
PORTS = ("GATEWAY_1", "GATEWAY_2", "SIM_US_EAST", "SIM_EU_WEST", "SIM_AP_SOUTHEAST", "REDIS", "PROMETHEUS")


@pytest.fixture
def demo(images: tuple[str, str], demo_tools: str) -> Iterator[dict[str, int]]:
    try:
        compose = engine.compose_command()
    except engine.Unavailable as exc:
        pytest.skip(f"compose demo: {exc}")
    ports = dict(zip(PORTS, engine.free_ports(len(PORTS))))
    env = {**os.environ, **{f"INFERCDN_DEMO_{k}_PORT": str(v) for k, v in ports.items()},
           "INFERCDN_DEMO_TAG": TAG, "INFERCDN_DEMO_REDIS_IMAGE": demo_tools,
           "INFERCDN_DEMO_PROMETHEUS_IMAGE": demo_tools}
    cmd = [*compose, "-f", str(COMPOSE_FILE), "-p", f"infercdn-test-{uuid.uuid4().hex[:8]}"]
    up = subprocess.run([*cmd, "up", "-d"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        yield ports
    finally:
        logs = subprocess.run([*cmd, "logs", "--no-color"], env=env, capture_output=True, text=True, timeout=60)
        subprocess.run([*cmd, "down", "-t", "10"], env=env, capture_output=True, text=True, timeout=300)
        print(logs.stdout[-6000:])


def ask(port: int, client_ip: str) -> tuple[str | None, dict]:
    body = json.dumps({"model": "tiny-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(), {
        "Content-Type": "application/json", "X-Forwarded-For": client_ip, "Authorization": "Bearer demo-key"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers.get("x-infercdn-region"), json.loads(resp.read())


def prometheus_targets(port: int) -> dict[str, str]:
    try:
        data = engine.http_json(f"http://127.0.0.1:{port}/api/v1/targets")
    except (OSError, ValueError):
        return {}
    return {t["scrapeUrl"]: t["health"] for t in data["data"]["activeTargets"]}


def test_compose_demo_serves_a_singapore_client_from_ap_southeast(demo: dict[str, int]) -> None:
    gateways = [demo["GATEWAY_1"], demo["GATEWAY_2"]]
    for port in gateways:
        assert engine.wait_for(engine.endpoints_healthy(f"http://127.0.0.1:{port}", 3), 90), f"gateway :{port}"
    for port in gateways:
        region, answer = ask(port, "103.4.96.1")
        assert region == "ap-southeast"
        assert answer["usage"]["completion_tokens"] == 4
        assert ask(port, "81.2.69.142")[0] == "eu-west"
    # the demo tenant's limits are shared through Redis (auth.shared): its keys are there
    client = redis.Redis(host="127.0.0.1", port=demo["REDIS"], socket_timeout=5)
    try:
        assert client.keys("infercdn-demo:*")
    finally:
        client.close()
    # Prometheus scrapes both gateways and the three pools
    expected = {f"http://127.0.0.1:{demo[k]}/metrics" for k in PORTS[:5]}
    up = engine.wait_for(lambda: (t := prometheus_targets(demo["PROMETHEUS"])).keys() == expected
                         and all(h == "up" for h in t.values()), 60, 1.0)
    assert up, prometheus_targets(demo["PROMETHEUS"])
