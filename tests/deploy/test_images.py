"""The gateway and simulator images, run as containers (host networking, free ports): a streamed
request through them, the region chosen with a mounted GeoIP database, the health check, the
non-root user, and SIGTERM mid-stream ending the stream complete."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gateway.config import GatewayCfg
from tests.conftest import base_config
from tests.deploy import engine

pytestmark = pytest.mark.timeout(600)

SINGAPORE = (1.29, 103.85)


def geoip_placing_8_8_8_8_in_singapore(path: Path) -> Path:
    """The embedded 2018 GeoLite2 puts 8.8.8.8 in the US: a gateway that routes it to ap-southeast
    must be reading the mounted file."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City", languages=["en"])
    writer.insert_network(IPSet(["8.8.8.0/24"]), {"location": {"latitude": SINGAPORE[0], "longitude": SINGAPORE[1]},
                                                  "country": {"iso_code": "SG"}})
    writer.to_db_file(str(path))
    path.chmod(0o644)  # the container's user (10001) reads it
    return path


# the gateway's config-file watch (gateway.config_watch_s), where this checkout has it
WATCH = "config_watch_s" in GatewayCfg.model_fields


def write_like_kubelet(folder: Path, data: dict) -> None:
    """Write config.yaml into ``folder`` as the kubelet updates a ConfigMap volume: the file is a
    symlink through ``..data``, itself a symlink to a timestamped folder, swapped by a rename."""
    version = folder / f"..{uuid.uuid4().hex}"
    version.mkdir(mode=0o755)
    (version / "config.yaml").write_text(yaml.safe_dump(data))
    (version / "config.yaml").chmod(0o644)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    (folder / "..data_tmp").symlink_to(version.name)
    os.rename(folder / "..data_tmp", folder / "..data")
    if not (folder / "config.yaml").is_symlink():
        (folder / "config.yaml").symlink_to("..data/config.yaml")
    if old is not None:
        shutil.rmtree(folder / old)


def read_config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def drain_region(folder: Path, region: str) -> None:
    data = read_config(folder)
    data["pools"][[p["region"] for p in data["pools"]].index(region)]["draining"] = True
    write_like_kubelet(folder, data)


def workers_args() -> list[str]:
    """`--workers 2` as in deploy/k8s where this checkout's gateway has the flag (every process
    then has to drain on the container's SIGTERM), nothing where it does not."""
    out = subprocess.run([sys.executable, "-m", "infercdn.cli", "gateway", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=engine.ROOT)
    return ["--workers", "2"] if "--workers" in out.stdout else []


@pytest.fixture
def fleet(images: tuple[str, str], tmp_path: Path) -> Iterator[tuple[engine.Containers, str, int, Path]]:
    """Simulator containers in us-east and ap-southeast and a gateway container in front of them."""
    gateway_image, sim_image = images
    us, sg, gw = engine.free_ports(3)
    box = engine.Containers(f"infercdn-test-{uuid.uuid4().hex[:8]}")
    try:
        for port in (us, sg):
            box.run(sim_image, f"sim-{port}", ["--port", str(port), "--ttft-ms", "5", "--itl-ms", "40"],
                    ["-e", f"INFERCDN_HEALTH_URL=http://127.0.0.1:{port}/health"])
        data = base_config({"us-east": [f"http://127.0.0.1:{us}"], "ap-southeast": [f"http://127.0.0.1:{sg}"]},
                           gateway={"drain_notice_s": 3.0, "drain_timeout_s": 30.0, "access_log": "stdout"},
                           geoip={"database": "/usr/share/GeoIP/GeoLite2-City.mmdb"})
        if WATCH:
            data["gateway"]["config_watch_s"] = 0.5
        folder = tmp_path / "config"  # a folder, as Kubernetes mounts a ConfigMap: edits reach the container
        folder.mkdir(mode=0o755)
        write_like_kubelet(folder, data)
        geoip = geoip_placing_8_8_8_8_in_singapore(tmp_path / "GeoLite2-City.mmdb")
        name = box.run(gateway_image, "gateway", ["--port", str(gw), *workers_args()], [
            "-v", f"{folder}:/etc/infercdn:ro",
            "-v", f"{geoip}:/usr/share/GeoIP/GeoLite2-City.mmdb:ro",
            "-e", f"INFERCDN_HEALTH_URL=http://127.0.0.1:{gw}/healthz",
            "--health-interval", "1s", "--health-start-period", "1s", "--stop-timeout", "40",
            # as on Kubernetes: nothing writable but /tmp, no capabilities
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
        base = f"http://127.0.0.1:{gw}"
        assert engine.wait_for(engine.endpoints_healthy(base, 2), 60), box.logs(name)
        yield box, name, gw, folder
    finally:
        box.remove_all()


def stream(port: int, client_ip: str, max_tokens: int) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "tiny-chat", "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Hello!"}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "X-Forwarded-For": client_ip})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return resp, conn


def events(resp: http.client.HTTPResponse) -> Iterator[str]:
    """The data of each SSE event, until the stream ends (bounded by the connection's timeout)."""
    for _ in range(10_000):
        line = resp.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            yield line[6:].decode().strip()


def test_stream_through_containers_with_a_mounted_geoip_database(fleet) -> None:
    box, name, port, folder = fleet
    resp, conn = stream(port, "8.8.8.8", 8)
    try:
        assert resp.getheader("x-infercdn-region") == "ap-southeast"  # the mounted database decided
        data = list(events(resp))
    finally:
        conn.close()
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert sum(len(c["choices"][0]["delta"].get("content") or "") > 0 for c in chunks if c["choices"]) == 8
    # the container runs as the unprivileged user and its HEALTHCHECK (python, no curl) passes
    assert engine.docker("exec", name, "id", "-u").stdout.strip() == "10001"
    healthy = engine.wait_for(
        lambda: engine.docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() == "healthy", 30)
    assert healthy, engine.docker("inspect", "--format", "{{json .State.Health}}", name).stdout
    # SIGHUP reaches the gateway too: drain ap-southeast in the mounted config, reload, and the
    # same client is served from us-east
    drain_region(folder, "ap-southeast")
    engine.docker("kill", "--signal", "HUP", name)
    assert engine.wait_for(lambda: region_of(port, "8.8.8.8") == "us-east", 20), box.logs(name)


@pytest.mark.skipif(not WATCH, reason="gateway.config_watch_s (the config-file watch) is not in this checkout")
def test_a_configmap_style_update_reloads_without_a_signal(fleet) -> None:
    """What Kubernetes does to a mounted ConfigMap (a `..data` symlink swap) reaches the gateway
    in the container by itself, within gateway.config_watch_s."""
    box, name, port, folder = fleet
    assert region_of(port, "8.8.8.8") == "ap-southeast"
    drain_region(folder, "ap-southeast")
    assert engine.wait_for(lambda: region_of(port, "8.8.8.8") == "us-east", 20), box.logs(name)


def region_of(port: int, client_ip: str) -> str | None:
    resp, conn = stream(port, client_ip, 1)
    try:
        list(events(resp))
        return resp.getheader("x-infercdn-region")
    finally:
        conn.close()


def test_sigterm_mid_stream_drains_and_the_stream_ends_complete(fleet) -> None:
    box, name, port, _ = fleet
    base = f"http://127.0.0.1:{port}"
    resp, conn = stream(port, "8.8.8.8", 60)  # 60 tokens × 40 ms: ~2.4 s
    try:
        it = events(resp)
        first = [next(it) for _ in range(3)]
        engine.docker("kill", "--signal", "TERM", name)
        # the gateway (PID 1 of the container) got the signal: /readyz says draining
        assert engine.wait_for(lambda: engine.http_status(base + "/readyz") == 503, 10), box.logs(name)
        rest = list(it)
    finally:
        conn.close()
    data = first + rest
    assert data[-1] == "[DONE]", data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    assert not any("error" in c for c in chunks)
    assert sum(len(c["choices"][0]["delta"].get("content") or "") > 0 for c in chunks if c["choices"]) == 60
    # and then it exits by itself, cleanly, well before docker's kill deadline
    exit_code = engine.docker("wait", name, timeout=60).stdout.strip()
    assert exit_code == "0", box.logs(name)
    assert "draining" in box.logs(name)
