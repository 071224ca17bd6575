"""A Docker engine for the deploy tests: found running, or started here (root and dockerd needed:
`.ci/run` installs Debian's docker.io), and the images built once per session.  Where no engine can
be had the tests skip, saying why.  All containers use host networking (traffic stays on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"


class Unavailable(Exception):
    """Why the deploy tests cannot run here (the message becomes the skip reason)."""


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def engine_up() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def docker_engine(log_dir: Path) -> Iterator[None]:
    """Yield with an engine answering; start dockerd (and stop it afterwards) when none runs."""
    if shutil.which("docker") is None:
        raise Unavailable("no docker CLI (apt-get install docker.io; .ci/run does)")
    if engine_up():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise Unavailable("no Docker engine running, and dockerd cannot be started here (needs root and docker.io)")
    # Host networking only: no bridge, no iptables rules (works where iptables is missing too)
    with open(log_dir / "dockerd.log", "wb") as log:
        proc = subprocess.Popen([dockerd, "--iptables=false", "--bridge=none"], stdout=log, stderr=log)
    try:
        if not wait_for(engine_up, 60, 0.5):
            raise Unavailable(f"dockerd did not start in 60 s (see {log_dir / 'dockerd.log'})")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for(predicate: Callable[[], Any], timeout_s: float, every_s: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout_s`` passes (bounded)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / every_s) + 1):
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(every_s)
    return None


def base_image() -> str:
    """$INFERCDN_DOCKER_BASE (e.g. python:3.11-slim where a registry is reachable), else the local
    debootstrap base of make-base.sh (cached by a hash of its inputs)."""
    return os.environ.get("INFERCDN_DOCKER_BASE") or make_base()


def make_base(**env: str) -> str:
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise Unavailable("no base image: set INFERCDN_DOCKER_BASE, or run as root with debootstrap installed")
    out = subprocess.run(["bash", str(DOCKER_DIR / "make-base.sh")], capture_output=True, text=True,
                         timeout=540, env={**os.environ, **env})
    if out.returncode != 0:
        raise Unavailable(f"make-base.sh failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def build_images(base: str, tag: str) -> tuple[str, str]:
    out = subprocess.run(["bash", str(DOCKER_DIR / "build.sh"), "--base", base, "--tag", tag],
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, f"build.sh failed:\n{out.stderr[-4000:]}"
    gateway, sim = out.stdout.split()
    return gateway, sim


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1 (host-network containers bind them next)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Containers:
    """Containers started by one test, removed at the end whatever happened."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def run(self, image: str, name: str, args: Sequence[str] = (), docker_args: Sequence[str] = ()) -> str:
        full = f"{self.prefix}-{name}"
        docker("run", "-d", "--name", full, "--network", "host", *docker_args, image, *args)
        self.names.append(full)
        return full

    def logs(self, name: str) -> str:
        out = docker("logs", name, check=False)
        return out.stdout + out.stderr

    def remove_all(self) -> None:
        for name in reversed(self.names):
            docker("rm", "-f", name, check=False)


def http_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status of GET ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def endpoints_healthy(gateway: str, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            eps = http_json(gateway + "/admin/observations")
        except (OSError, ValueError):
            return False
        return len(eps) == expected and all(ep["healthy"] for ep in eps.values())
    return check


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin), else Debian's `docker-compose`, else the one `make compose-tool`
    puts in .venv-compose."""
    try:
        if docker("compose", "version", check=False, timeout=20).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    for candidate in (shutil.which("docker-compose"), str(ROOT / ".venv-compose" / "bin" / "docker-compose")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    raise Unavailable("neither `docker compose` nor docker-compose (apt-get install docker-compose, "
                      "or `make compose-tool`)")
