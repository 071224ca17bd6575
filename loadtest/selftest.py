"""Measure how much load one generator process can drive.

Starts a fast local server in a child process (so it does not share the generator's core),
runs a closed-loop saturation run per workload and reports requests/s, streams/s, tokens/s and
the generator's own CPU per request; then an open-loop run at a fraction of the measured ceiling
shows the scheduling lag when the generator is not the bottleneck::

    python -m loadtest.selftest                       # raw-protocol fast server
    python -m loadtest.selftest --server sim          # the project's simulator (worker.sim)
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from dataclasses import replace

from .config import LoadConfig
from .engine import Engine
from .report import build_report

SIM_SNIPPET = """
import asyncio
from worker.sim import SimConfig, Simulator
async def main():
    sim = Simulator(SimConfig(model="tiny-chat", ttft_ms=0, itl_ms=0))
    print(await sim.start(port=0), flush=True)
    await asyncio.Event().wait()
try:
    import uvloop; uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""

WORKLOADS = (("non-stream, 64 tokens", False, "64"), ("stream, 64 tokens", True, "64"),
             ("stream, 256 tokens", True, "256"))


def start_server(kind: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "loadtest.fastserver", "--port", "0"] if kind == "fast" \
        else [sys.executable, "-c", SIM_SNIPPET]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"server did not start: {url!r}")
    return proc, url


async def measure(base: LoadConfig, model: str) -> dict:
    report = build_report(await Engine(base, model).run())
    t, g = report["totals"], report["generator"]
    cpu = g["cpu_user_s"] + g["cpu_sys_s"]
    return {"requests_per_s": t["requests_per_s"], "output_tokens_per_s": t["output_tokens_per_s"],
            "errors": t["errors"], "cpu_util": g["cpu_util"],
            "cpu_us_per_request": round(cpu / max(t["ok"], 1) * 1e6, 1),
            "ttft_p50_ms": report["latency_ms"]["ttft"]["p50"],
            "schedule_lag_p99_ms": g["schedule_lag_ms"]["p99"],
            "late_over_10ms": g["late_requests"]["over_10ms"]}


async def run_all(url: str, model: str, seconds: float, concurrency: int, fraction: float) -> list[dict]:
    rows = []
    for name, stream, tokens in WORKLOADS:
        base = LoadConfig(url=url, model=model, stream=stream, max_tokens=tokens, prompt_tokens="32",
                          concurrency=concurrency, duration=seconds, grace=5.0).validate()
        closed = await measure(base, model)
        rate = max(1.0, closed["requests_per_s"] * fraction)
        open_cfg = replace(base, concurrency=None, rate=rate, arrival="poisson").validate()
        rows.append({"workload": name, "closed_loop": closed, "open_loop_rate": round(rate, 1),
                     "open_loop": await measure(open_cfg, model)})
    return rows


def print_table(rows: list[dict], concurrency: int, fraction: float) -> None:
    print(f"| workload | closed loop ({concurrency} users): req/s | tokens/s | generator CPU | CPU/request |"
          f" open loop at {fraction:.0%}: rate | achieved | lag p99 | late >10 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        c, o = row["closed_loop"], row["open_loop"]
        print(f"| {row['workload']} | {c['requests_per_s']:.0f} | {c['output_tokens_per_s']:.0f} | "
              f"{c['cpu_util']:.0%} | {c['cpu_us_per_request']:.0f} µs | {row['open_loop_rate']:.0f} | "
              f"{o['requests_per_s']:.0f} | {o['schedule_lag_p99_ms']} ms | {o['late_over_10ms']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure the load generator's own ceiling")
    parser.add_argument("--server", choices=("fast", "sim"), default="fast")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.7, help="open-loop rate as a share of the ceiling")
    args = parser.parse_args(argv)
    proc, url = start_server(args.server)
    model = "fast" if args.server == "fast" else "tiny-chat"
    try:
        coro = run_all(url, model, args.seconds, args.concurrency, args.fraction)
        try:
            import uvloop

            rows = uvloop.run(coro)
        except ImportError:
            rows = asyncio.run(coro)
    finally:
        proc.kill()
        proc.wait(10)
    print_table(rows, args.concurrency, args.fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
