"""The workloads and one measurement of one system on one of them.

The proxy's CPU (user and system, its whole process tree) is read from /proc just before and
just after the measured window; requests and tokens are counted over the same window by the load
generator, which runs in its own process."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import wrkload
from bench.peers import Running
from bench.procs import Cpu, spawn, stop, tree_cpu, tree_rss, wait_port, free_port


@dataclass(frozen=True)
class Workload:
    name: str
    stream: bool
    max_tokens: int
    itl_ms: float
    concurrency: int
    tool: str  # "wrk" or "client"
    failover: bool = False
    text: str = ""


WORKLOADS = {w.name: w for w in (
    Workload("W1", False, 64, 0, 64, "wrk", text="non-stream, 64 tokens, 64 connections"),
    Workload("W2", True, 64, 0, 64, "wrk", text="stream, 64 tokens unpaced, 64 connections"),
    Workload("W3", True, 256, 20, 200, "client", text="stream, 256 tokens at 20 ms/token, 200 streams"),
    Workload("W4", True, 256, 20, 200, "client", True, "W3 with one region killed mid-run"),
)}


@dataclass(frozen=True)
class Timing:
    wrk_s: float = 6.0
    warmup_s: float = 2.0
    window_s: float = 10.0
    failover_window_s: float = 15.0


@dataclass
class Upstreams:
    procs: list[subprocess.Popen]
    urls: list[str]

    def stop(self) -> None:
        for p in self.procs:
            stop(p)


def start_upstreams(n: int, itl_ms: float, work: Path, tree: Path, ttft_ms: float = 0.0) -> Upstreams:
    """``n`` simulators, each in its own process, running the simulator code found in ``tree``."""
    work.mkdir(parents=True, exist_ok=True)
    procs, urls = [], []
    for i in range(n):
        port = free_port()
        log = work / f"upstream-{i}-{port}.log"
        proc = spawn([sys.executable, str(Path(__file__).with_name("upstream.py")), "--port", str(port),
                      "--itl-ms", str(itl_ms), "--ttft-ms", str(ttft_ms)], log, env={"PYTHONPATH": str(tree)})
        wait_port(port, proc, 20, log)
        procs.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    return Upstreams(procs, urls)


def sim_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/sim/stats", timeout=2) as resp:
        return json.loads(resp.read())


def _cpu(run: Running) -> Cpu:
    return tree_cpu(run.proc.pid) if run.proc else Cpu(0.0, 0.0)


def _rss(run: Running) -> int:
    return tree_rss(run.proc.pid) if run.proc else 0


def measure_wrk(run: Running, wl: Workload, t: Timing, work: Path) -> dict:
    lua = wrkload.script(work, wl.stream, wl.max_tokens, run.headers)
    wrkload.finish(wrkload.start(run.urls[0], lua, wl.concurrency, 2, 1), 30)  # warm-up, not counted
    per = wl.concurrency // len(run.urls)
    threads = max(1, 2 // len(run.urls))
    c0 = _cpu(run)
    procs = [wrkload.start(u, lua, per, threads, t.wrk_s) for u in run.urls]
    time.sleep(t.wrk_s / 2)
    rss = _rss(run)
    res = wrkload.merge([wrkload.finish(p, t.wrk_s + 60) for p in procs])
    cpu = _cpu(run) - c0
    seconds = res["duration_us"] / 1e6
    errors = res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"]
    ok = res["requests"] - res["status"]
    return _figures(cpu, ok, ok * wl.max_tokens, seconds, errors, rss,
                    {"latency_p50_ms": res["p50_us"] / 1000, "latency_p99_ms": res["p99_us"] / 1000,
                     "error_kinds": {k: res[k] for k in ("connect", "read", "write", "status", "timeout") if res[k]}})


def measure_stream(run: Running, wl: Workload, t: Timing, ups: Upstreams | None = None) -> dict:
    """Closed-loop streams through ``run``; with ``wl.failover`` the busier upstream is killed a
    third into the window."""
    window = t.failover_window_s if wl.failover else t.window_s
    t0 = time.monotonic() + 1.0 + t.warmup_s
    t1 = t0 + window
    cmd = [sys.executable, "-m", "bench.client", "--concurrency", str(wl.concurrency), "--max-tokens",
           str(wl.max_tokens), "--t0", f"{t0:.4f}", "--t1", f"{t1:.4f}"]
    cmd += [a for u in run.urls for a in ("--url", u)] + [a for h in run.headers for a in ("--header", h)]
    if wl.failover:
        cmd.append("--records")
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _sleep_until(t0)
    c0 = _cpu(run)
    kill = None
    if wl.failover and ups is not None:
        _sleep_until(t0 + window / 3)
        kill = _kill_busier(ups)
    _sleep_until(t0 + window / 2)
    rss = _rss(run)
    _sleep_until(t1)
    cpu = _cpu(run) - c0
    out, err = client.communicate(timeout=60)
    if client.returncode != 0:
        raise RuntimeError(f"bench.client exited {client.returncode}: {err[-400:]}")
    res = json.loads(out)
    extra = {"ttft_p50_ms": res["ttft_ms"]["p50"], "ttft_p99_ms": res["ttft_ms"]["p99"],
             "error_kinds": {k: v for k, v in res["outcomes"].items() if k != "ok"},
             "client_cpu_util": res["client_cpu_util"], "error_samples": res["error_samples"]}
    if kill is not None:
        extra["failover"] = _failover(res["records"], *kill)
    return _figures(cpu, res["completed"], res["tokens"], window, res["errors"], rss, extra)


def _kill_busier(ups: Upstreams) -> tuple[float, int]:
    counts = [sim_stats(u)["requests_total"] for u in ups.urls]
    victim = max(range(len(counts)), key=counts.__getitem__)
    ups.procs[victim].kill()  # SIGKILL: the region vanishes, streams in flight are cut
    return time.monotonic(), victim


def _failover(records: list, kill_t: float, victim: int) -> dict:
    """Failed requests, and how long traffic kept reaching the dead region (from x-infercdn-region)."""
    region = ("eu-central", "eu-west")[victim]
    after = [r for r in records if r[0] >= kill_t]
    to_dead = [r[0] for r in after if r[1] == region]
    failed = [r[0] for r in records if r[2] != "ok" and r[0] >= kill_t - 6.0]
    # streams in flight on the dead region (known from x-infercdn-region) that still ended well, i.e.
    # were resumed elsewhere, and their longest silence between two reads
    survived = sorted(r[4] for r in records if r[0] < kill_t < r[3] and r[2] == "ok" and r[1] == region)
    return {"victim_upstream": victim, "victim_region": region,
            "failed_requests": sum(1 for r in records if r[2] != "ok"),
            "requests_after_kill": len(after),
            "routed_to_dead_region_after_kill": len(to_dead),
            "leave_s": round(max(to_dead) - kill_t, 3) if to_dead else 0.0,
            "last_failure_after_kill_s": round(max(failed) - kill_t, 3) if failed else None,
            "resumed_streams": len(survived),
            "resumed_max_gap_ms": round(survived[-1] * 1000, 1) if survived else None,
            "resumed_p50_gap_ms": round(survived[len(survived) // 2] * 1000, 1) if survived else None,
            "regions_seen": sorted({r[1] for r in records if r[1]})}


def _figures(cpu: Cpu, requests: int, tokens: int, seconds: float, errors: int, rss: int, extra: dict) -> dict:
    return {"status": "ok", "cpu_user_s": round(cpu.user, 3), "cpu_sys_s": round(cpu.system, 3),
            "requests": requests, "tokens": tokens, "seconds": round(seconds, 3),
            "requests_per_s": round(requests / seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
            "cpu_per_request_ms": round(cpu.total / requests * 1e3, 4) if requests else None,
            "cpu_per_token_us": round(cpu.total / tokens * 1e6, 2) if tokens else None,
            "user_per_token_us": round(cpu.user / tokens * 1e6, 2) if tokens else None,
            "sys_per_token_us": round(cpu.system / tokens * 1e6, 2) if tokens else None,
            "errors": errors, "rss_mib": round(rss / 2**20, 1), **extra}


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
