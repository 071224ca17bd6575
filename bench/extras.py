"""infercdn-only extras: the 10,000 idle-ish streams memory test and the py-spy profile of W3."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench import peers
from bench.peers import CACHE, PeerError, _run
from bench.procs import tree_rss
from bench.workloads import start_upstreams

PYSPY_VERSION = "0.4.3"


def idle_streams(work: Path, tree: Path, streams: int = 10_000, itl_ms: float = 1000.0, ramp_s: float = 12.0,
                 hold_s: float = 10.0) -> dict:
    """``streams`` concurrent streams through one gateway, the upstream sending one token per
    ``itl_ms``; the gateway's RSS is sampled every 0.5 s and its peak reported.  Each stream holds
    two sockets in the gateway, so the count is capped by the hard RLIMIT_NOFILE (not raisable
    without CAP_SYS_RESOURCE); the RSS for ``streams`` is then projected from the per-stream cost."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    target, streams = streams, streams if hard == resource.RLIM_INFINITY else min(streams, (hard - 600) // 2)
    ups = start_upstreams(2, itl_ms, work / "idle", tree)
    run = None
    try:
        run = peers.start("infercdn", ups.urls, work / "idle", tree=tree)
        assert run.proc is not None
        rss0 = tree_rss(run.proc.pid)
        t0 = time.monotonic() + 1.0 + ramp_s + 2.0
        t1 = t0 + hold_s
        max_tokens = int((ramp_s + hold_s + 10) * 1000 / itl_ms) + 5  # no stream ends inside the test
        cmd = [sys.executable, "-m", "bench.client", "--url", run.urls[0], "--concurrency", str(streams),
               "--max-tokens", str(max_tokens), "--ramp", str(ramp_s), "--t0", f"{t0:.4f}", "--t1", f"{t1:.4f}"]
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = 0
        while time.monotonic() < t1:
            peak = max(peak, tree_rss(run.proc.pid))
            time.sleep(0.5)
        out, err = client.communicate(timeout=120)
        if client.returncode != 0:
            raise RuntimeError(f"bench.client exited {client.returncode}: {err[-400:]}")
        res = json.loads(out)
        per_stream = (peak - rss0) / max(1, res["open_peak"])
        return {"status": "ok", "target": target, "nofile_hard_limit": hard, "streams_run": streams,
                "rss_projected_target_mib": round((rss0 + per_stream * target) / 2**20, 1), "itl_ms": itl_ms, "streams_open": res["open_peak"],
                "rss_idle_mib": round(rss0 / 2**20, 1), "rss_peak_mib": round(peak / 2**20, 1),
                "rss_per_stream_kib": round(per_stream / 1024, 1),
                "errors": res["errors"], "error_kinds": {k: v for k, v in res["outcomes"].items() if k != "ok"},
                "tokens_per_s": res["tokens_per_s"], "client_cpu_util": res["client_cpu_util"]}
    except (PeerError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        return {"status": "failed", "error": str(exc)[:500]}
    finally:
        if run is not None:
            run.stop()
        ups.stop()


def pyspy() -> Path:
    home = CACHE / f"py-spy-{PYSPY_VERSION}"
    exe = home / "bin" / "py-spy"
    if not exe.exists():
        log = CACHE / f"py-spy-{PYSPY_VERSION}.log"
        _run([sys.executable, "-m", "venv", str(home)], log, 120)
        _run([str(home / "bin" / "pip"), "install", "-q", f"py-spy=={PYSPY_VERSION}"], log, 300)
    return exe


# what --profile samples: (workload, system), the system being one of infercdn's two set-ups
PROFILES = {"W1": ("W1", "infercdn-passthrough"), "W1-assembled": ("W1", "infercdn"),
            "W2": ("W2", "infercdn"), "W3": ("W3", "infercdn")}


def profile(work: Path, tree: Path, svg: Path, name: str, seconds: float = 10.0) -> dict:
    """Run one workload through infercdn (not measured) while py-spy samples it: a flame graph SVG
    plus the functions with the most samples on top of the stack (self time).  ``name`` is a key
    of :data:`PROFILES` (W1 profiles the passthrough set-up, W1-assembled the default one)."""
    from bench.workloads import WORKLOADS, Timing, measure_stream, measure_wrk
    wl_name, system = PROFILES[name]
    wl = WORKLOADS[wl_name]
    here = work / f"profile-{name}"
    ups = start_upstreams(2, wl.itl_ms, here, tree)
    run = None
    spies: list[subprocess.Popen] = []
    try:
        exe = pyspy()
        run = peers.start(system, ups.urls, here, tree=tree)
        assert run.proc is not None
        raw = here / "stacks.raw"
        common = ["record", "--pid", str(run.proc.pid), "--duration", str(int(seconds + 3)), "--rate", "200"]
        # the flame graph with --native: the compiled core's functions (C, infercdn/core.py) are
        # frames of their own (native stacks pause the process as it is sampled, and only one
        # sampler can: the self-time table's sampler reads without pausing, Python frames only)
        spies = [subprocess.Popen([str(exe), *common, *flags, "--format", fmt, "-o", str(path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for fmt, path, flags in (("flamegraph", svg, ["--native"]), ("raw", raw, ["--nonblocking"]))]
        if wl.tool == "wrk":
            measure_wrk(run, wl, Timing(wrk_s=seconds), here)
        else:
            measure_stream(run, wl, Timing(warmup_s=1.0, window_s=seconds))
        logs = [p.communicate(timeout=60)[0] for p in spies]
        if not svg.exists() or not raw.exists():
            raise RuntimeError(f"py-spy wrote no profile: {' | '.join(x[-300:] for x in logs)}")
        return {"status": "ok", "workload": name, "system": system, "svg": str(svg), **top_frames(raw)}
    except (PeerError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        return {"status": "failed", "workload": name, "error": str(exc)[:500]}
    finally:
        for p in spies:
            if p.poll() is None:
                p.kill()
        if run is not None:
            run.stop()
        ups.stop()


def top_frames(raw: Path, n: int = 15) -> dict:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        c = int(count)
        total += c
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    share = lambda cnt: [(f, round(100 * v / total, 1)) for f, v in cnt.most_common(n)]  # noqa: E731
    return {"samples": total, "self_pct": share(self_c), "inclusive_pct": share(incl)}
