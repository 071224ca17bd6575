"""The systems under test: how each is installed (idempotent, cached) and started.

PyPI peers go into their own venv under ``~/.cache/infercdn/bench/<peer>-<version>`` (override
with ``INFERCDN_BENCH_CACHE``); Debian tools are installed with apt-get when missing.  Every
failure is raised as :class:`PeerError` so the run reports it instead of dropping the system."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import configs
from bench.procs import free_port, spawn, stop, tail, wait_port

CACHE = Path(os.environ.get("INFERCDN_BENCH_CACHE", Path.home() / ".cache" / "infercdn" / "bench"))
ROOT = Path(__file__).resolve().parent.parent
LITELLM_KEY = "sk-bench"
PYPI = {"vllm-router": ("vllm-router", "0.1.17"), "sglang-router": ("sglang-router", "0.3.2"),
        "litellm": ("litellm[proxy]", "1.108.7")}  # never 1.107.0 (a compromised release)
# infercdn-passthrough: infercdn relaying non-stream answers as the pool's JSON (models."*".non_stream:
# passthrough), as the other proxies do; by default it serves them from upstream streams
# pyrelay: the floor of a Python proxy on the gateway's runtime (bench/pyrelay.py), a yardstick;
# pyrelay-assembled: the same floor for non-stream answers assembled from streams (W1 only)
SYSTEMS = ("direct", "infercdn", "infercdn-passthrough", "nginx", "vllm-router", "sglang-router", "litellm",
           "pyrelay", "pyrelay-assembled")
FAILOVER = ("infercdn", "nginx", "vllm-router", "sglang-router")


class PeerError(Exception):
    """A system could not be installed or started; the message says why."""


@dataclass
class Running:
    name: str
    urls: list[str]
    proc: subprocess.Popen | None = None
    headers: list[str] = field(default_factory=list)
    version: str = ""

    def stop(self) -> None:
        stop(self.proc)


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with open(log, "ab") as out:
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if res.returncode != 0:
        raise PeerError(f"{' '.join(cmd[:4])}… exited {res.returncode}: "
                        f"{log.read_text(errors='replace')[-400:].strip()}")


def apt_install(*packages: str) -> None:
    missing = [p for p in packages if shutil.which(p) is None and shutil.which(f"/usr/sbin/{p}") is None]
    if not missing:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "apt.log"
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    try:
        _run(env_cmd + ["apt-get", "install", "-y", "-q", *missing], log, 600)
    except PeerError:
        _run(["apt-get", "update", "-q"], log, 600)
        _run(env_cmd + ["apt-get", "install", "-y", "-q", *missing], log, 600)


def venv_for(name: str) -> Path:
    """The venv holding PyPI peer ``name``, created and filled on first use."""
    req, version = PYPI[name]
    home = CACHE / f"{name}-{version}"
    if (home / ".installed").exists():
        return home
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / f"{name}-{version}.log"
    try:
        if not (home / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", str(home)], log, 120)
        _run([str(home / "bin" / "pip"), "install", "-q", f"{req}=={version}"], log, 900)
    except (PeerError, subprocess.TimeoutExpired) as exc:
        raise PeerError(f"install of {req}=={version} failed: {exc}") from None
    (home / ".installed").touch()
    return home


def install(name: str, rev: str | None = None) -> str:
    """Make ``name`` runnable; return its version string."""
    if name in ("direct", "infercdn", "infercdn-passthrough", "pyrelay", "pyrelay-assembled"):
        return "" if name == "direct" else _git_rev(None if name.startswith("pyrelay") else rev)
    if name == "nginx":
        apt_install("nginx")
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        return out.stderr.strip().split("/")[-1]
    venv_for(name)
    return PYPI[name][1]


def _git_rev(rev: str | None) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", rev or "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise PeerError(f"unknown git revision {rev!r}")
    if rev:
        return f"{out.stdout.strip()} (git snapshot)"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "gateway", "routing"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return out.stdout.strip() + (" + uncommitted changes (working tree)" if dirty else " (working tree)")


def snapshot(rev: str, dest: Path) -> Path:
    """The project's files at git ``rev`` extracted into ``dest`` (infercdn then runs from there,
    untouched by edits in the working tree while the bench runs)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise PeerError(f"git archive {rev} failed: {archive.stderr.decode(errors='replace')[-300:]}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    build_core(dest)
    return dest


def build_core(tree: Path) -> str:
    """Compile ``tree``'s core where it has one (``infercdn core build``: what ``make install``
    does; a revision from before it runs as Python); return which build infercdn runs from it."""
    if not (tree / "infercdn" / "core.py").exists():
        return "Python core (before the compiled core)"
    cmd = [sys.executable, "-m", "infercdn.cli", "core"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("INFERCDN_CORE_DIR", None)
    subprocess.run([*cmd, "build", "--if-possible"], cwd=tree, env=env, capture_output=True, timeout=900)
    status = subprocess.run([*cmd, "status"], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    if env.get("INFERCDN_CORE") == "python":
        return "Python core (INFERCDN_CORE=python)"
    return "compiled core" if status.returncode == 0 else f"Python core ({status.stdout.strip()})"


def start(name: str, upstreams: list[str], work: Path, *, regions: bool = False, tree: Path = ROOT) -> Running:
    """Start system ``name`` in front of ``upstreams``; return once it accepts connections.
    infercdn runs from ``tree`` (the working tree, or a :func:`snapshot`)."""
    if name == "direct":
        return Running(name, list(upstreams))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / f"{name}.log"
    env: dict[str, str] = {}
    if name.startswith("infercdn"):
        cfg = work / "infercdn.yaml"
        has_log = "access_log" in (tree / "gateway" / "config.py").read_text()
        cfg.write_text(configs.infercdn_yaml(upstreams, regions, passthrough=name == "infercdn-passthrough",
                                             access_log=has_log))
        cmd = [sys.executable, "-m", "infercdn.cli", "gateway", "--config", str(cfg), "--port", str(port)]
        if (tree / "gateway" / "workers.py").exists():
            cmd += ["--workers", "1"]  # one process, as nginx runs one worker here (bench.workers scales N)
    elif name == "nginx":
        (work / "logs").mkdir(exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(configs.nginx_conf(upstreams, port, work))
        cmd = ["nginx", "-c", str(conf), "-p", str(work)]
    elif name == "vllm-router":
        cmd = [str(venv_for(name) / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
               "--worker-urls", *upstreams, "--policy", "round_robin", "--prometheus-host", "127.0.0.1",
               "--prometheus-port", str(free_port()), "--log-level", "warning"]
    elif name == "sglang-router":
        cmd = [str(venv_for(name) / "bin" / "python"), "-m", "sglang_router.launch_router", "--host",
               "127.0.0.1", "--port", str(port), "--worker-urls", *upstreams, "--policy", "round_robin",
               "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()), "--log-level", "warn"]
    elif name in ("pyrelay", "pyrelay-assembled"):
        cmd = [sys.executable, "-m", "bench.pyrelay", "--port", str(port)]
        cmd += [a for u in upstreams for a in ("--upstream", u)] + (["--assemble"] if name == "pyrelay-assembled" else [])
    elif name == "litellm":
        cfg = work / "litellm.yaml"
        cfg.write_text(configs.litellm_yaml(upstreams, LITELLM_KEY))
        cmd = [str(venv_for(name) / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
               "--port", str(port), "--num_workers", "1"]
        env = configs.LITELLM_ENV
    else:
        raise PeerError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    if name.startswith("infercdn"):
        env = {"PYTHONPATH": str(tree)}
    proc = spawn(cmd, log, env=env, cwd=str(tree if name.startswith("infercdn") else ROOT))
    try:
        wait_port(port, proc, timeout=120 if name == "litellm" else 30, log=log)
    except RuntimeError as exc:
        stop(proc)
        raise PeerError(f"{name} did not start: {exc}") from None
    headers = [f"Authorization: Bearer {LITELLM_KEY}"] if name == "litellm" else []
    running = Running(name, [f"http://127.0.0.1:{port}"], proc, headers)
    try:
        ready(running.urls[0], headers, timeout=60)
    except PeerError as exc:
        stop(proc)
        raise PeerError(f"{name}: {exc}; log: {tail(log)}") from None
    return running


def ready(url: str, headers: list[str], timeout: float) -> None:
    """Wait until one small chat completion through ``url`` answers 200."""
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2}).encode()
    hdrs = {"Content-Type": "application/json", **dict(h.split(": ", 1) for h in headers)}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise PeerError(f"no 200 answer within {timeout:.0f} s (last: {last})")
