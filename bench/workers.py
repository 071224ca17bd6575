"""How ``infercdn gateway --workers N`` scales, beside nginx with as many worker processes.

    python -m bench.workers [--workers 1,2] [--workloads W1,W2] [--rounds 3] [--quick]
                            [--upstreams 2] [--connections 64] [--pin]

For each N and each workload: requests/s and the gateway's CPU per request (user + system of its
whole process tree: supervisor and workers) under ``wrk``, for infercdn with ``--workers N`` and
nginx with ``worker_processes N``, in front of the same simulated upstreams (own processes).  On
W1 (non-stream) infercdn relays the pool's JSON as nginx does (``non_stream: passthrough``, the
``infercdn-passthrough`` of ``bench.run``); ``--assemble`` measures its default instead.
Rounds are interleaved; the summary gives medians, the scaling of each system against its own
N = 1 and infercdn's requests/s as a ratio to nginx's at the same N.

On a machine with few cores the load generator and the upstreams share the cores with the
gateway, so the scaling seen there is a floor.  To measure the gateway's own scaling on a bigger
machine, ``--pin`` gives the gateway the first N cores of this process's CPU set (the workers then
default to N too) and everything else (upstreams, ``wrk``) the rest: use a machine with at least
2 × max(N) cores and enough ``--upstreams`` that they are not the bottleneck (about one per
gateway worker; each simulator is one Python process).  Results: ``bench/results/<date>-workers.json``
and ``.md``."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from bench import configs, peers, report
from bench.client import raise_nofile
from bench.peers import Running
from bench.procs import free_port, spawn, stop, wait_port
from bench.workloads import WORKLOADS, Timing, measure_wrk, start_upstreams

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("infercdn", "nginx")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="comma list of N (default 1,2)")
    p.add_argument("--workloads", default="W1,W2", help="wrk workloads of bench.run (W1 non-stream, W2 stream)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="1 round, 3 s windows")
    p.add_argument("--upstreams", type=int, default=2, help="simulated upstreams (own processes)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--pin", action="store_true", help="the gateway on the first N cores, the rest elsewhere")
    p.add_argument("--assemble", action="store_true",
                   help="W1: infercdn serves non-stream requests from upstream streams (its default) instead "
                        "of relaying the pool's JSON as nginx does")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for w in args.workloads:
        if w not in WORKLOADS or WORKLOADS[w].tool != "wrk":
            p.error(f"{w!r}: only the wrk workloads (W1, W2) measure requests/s here")
    args.rounds = args.rounds or (1 if args.quick else 3)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) < max(args.workers) + 1:
        p.error(f"--pin needs more than {max(args.workers)} cores; this process may use {len(cpus)}")
    return args


def log(msg: str) -> None:
    print(f"[bench.workers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpus`` (a child inherits its parent's CPU set)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start(system: str, workers: int, upstreams: list[str], work: Path, passthrough: bool) -> Running:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = work / f"{system}.log"
    if system == "infercdn":
        cfg = work / "infercdn.yaml"
        cfg.write_text(configs.infercdn_yaml(upstreams, regions=False, passthrough=passthrough))
        cmd = [sys.executable, "-m", "infercdn.cli", "gateway", "--config", str(cfg), "--port", str(port),
               "--workers", str(workers)]
        proc = spawn(cmd, log_path, env={"PYTHONPATH": str(peers.ROOT)}, cwd=str(peers.ROOT))
    else:
        (work / "logs").mkdir(exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(configs.nginx_conf(upstreams, port, work, workers))
        proc = spawn(["nginx", "-c", str(conf), "-p", str(work)], log_path)
    try:
        wait_port(port, proc, timeout=60, log=log_path)
        run = Running(f"{system}-w{workers}", [f"http://127.0.0.1:{port}"], proc)
        peers.ready(run.urls[0], [], timeout=60)
    except BaseException:
        stop(proc)
        raise
    return run


def one(system: str, n: int, wl: str, ups: list[str], args: argparse.Namespace, timing: Timing, work: Path,
        rnd: int, gateway_cpus: set[int] | None) -> dict:
    rec: dict = {"round": rnd, "workload": wl, "system": system, "workers": n}
    run = None
    try:
        with affinity(gateway_cpus):
            run = start(system, n, ups, work / f"r{rnd}-{wl}-{system}-w{n}",
                        passthrough=not WORKLOADS[wl].stream and not args.assemble)
        rec.update(measure_wrk(run, replace(WORKLOADS[wl], concurrency=args.connections), timing, work))
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:400])
    finally:
        if run is not None:
            run.stop()
    log(f"  r{rnd} {wl} {system} N={n}: " + ", ".join(
        f"{k} {rec.get(k)}" for k in ("status", "requests_per_s", "cpu_per_request_ms", "errors")))
    return rec


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["workload"], r["system"], r["workers"]) for r in runs})
    for wl, system, n in keys:
        ok = [r for r in runs if (r["workload"], r["system"], r["workers"]) == (wl, system, n)
              and r.get("status") == "ok"]
        row = {"workload": wl, "system": system, "workers": n, "rounds": len(ok)}
        for k in ("requests_per_s", "cpu_per_request_ms", "errors"):
            vals = [r[k] for r in ok if r.get(k) is not None]
            row[k] = round(statistics.median(vals), 4) if vals else None
        rows.append(row)
    by = {(r["workload"], r["system"], r["workers"]): r for r in rows}
    for r in rows:
        one_ = by.get((r["workload"], r["system"], 1))
        nginx = by.get((r["workload"], "nginx", r["workers"]))
        if one_ and one_["requests_per_s"] and r["requests_per_s"]:
            r["scaling_vs_n1"] = round(r["requests_per_s"] / one_["requests_per_s"], 2)
        if nginx and nginx["requests_per_s"] and r["requests_per_s"]:
            r["requests_ratio_to_nginx"] = round(r["requests_per_s"] / nginx["requests_per_s"], 3)
    return rows


def markdown(doc: dict) -> str:
    lines = [f"# --workers scaling, {doc['date']}", "",
             f"`{doc['command']}` on {doc['host']['cpus']} CPUs ({doc['host']['pinning']}), "
             f"{doc['rounds']} round(s), medians; {doc['upstreams']} simulated upstreams, "
             f"wrk with {doc['connections']} connections, {doc['timing']['wrk_s']:g} s windows; "
             f"infercdn's non-stream answers: {doc['infercdn_non_stream']}.", "",
             "| workload | system | N | requests/s | CPU ms/request | scaling vs N=1 | req/s ÷ nginx same N | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["summary"]:
        lines.append(f"| {r['workload']} | {r['system']} | {r['workers']} | {r['requests_per_s']} | "
                     f"{r['cpu_per_request_ms']} | {r.get('scaling_vs_n1', '–')} | "
                     f"{r.get('requests_ratio_to_nginx', '–')} | {r['errors']} |")
    lines += ["", "Workloads: " + "; ".join(f"{w}: {WORKLOADS[w].text.split(',')[0]}" for w in doc["workloads"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_nofile(100_000)
    peers.apt_install("wrk", "nginx")
    timing = Timing(wrk_s=3) if args.quick else Timing()
    cpus = sorted(os.sched_getaffinity(0))
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    runs: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infercdn-bench-workers-") as tmp:
        work = Path(tmp)
        for rnd in range(1, args.rounds + 1):
            for wl in args.workloads:
                gateway_cpus = set(cpus[: max(args.workers)]) if args.pin else None
                rest = set(cpus[max(args.workers):]) if args.pin else None
                with affinity(rest):
                    ups = start_upstreams(args.upstreams, WORKLOADS[wl].itl_ms, work / f"r{rnd}-{wl}-up", peers.ROOT)
                try:
                    order = [(s, n) for n in args.workers for s in SYSTEMS]
                    k = (rnd - 1) % len(order)
                    for system, n in order[k:] + order[:k]:
                        log(f"round {rnd}/{args.rounds} {wl} {system} N={n}")
                        pin = set(cpus[:n]) if args.pin else gateway_cpus
                        with affinity(rest):  # wrk, started inside the measurement, runs off the gateway's cores
                            runs.append(one(system, n, wl, ups.urls, args, timing, work, rnd, pin))
                finally:
                    ups.stop()
    doc = {"schema": "infercdn.bench.workers/1", "date": stamp,
           "infercdn_non_stream": "assembled from upstream streams" if args.assemble else "passthrough",
           "command": "python -m bench.workers " + shlex.join(sys.argv[1:] if argv is None else argv),
           "host": {"cpus": len(cpus), "kernel": platform.release(), "python": platform.python_version(),
                    "pinning": "gateway pinned to the first N cores" if args.pin else "no pinning: all share"},
           "rounds": args.rounds, "timing": timing.__dict__, "upstreams": args.upstreams,
           "connections": args.connections, "workloads": args.workloads,
           "summary": summarise(runs), "runs": runs, "elapsed_s": round(time.monotonic() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"{stamp}-workers"
    report.save(doc, base, markdown(doc))
    log(f"wrote {base}.json and .md in {doc['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
