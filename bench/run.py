"""``make bench``: direct access, infercdn and peer gateways on the same workloads, same run.

    python -m bench.run [--systems direct,infercdn,nginx] [--rounds 3] [--quick] [--profile [W1,W1-assembled,W2,W3]]
                        [--workloads W1,W2,W3,W4] [--no-idle]

Rounds are interleaved (every system on every workload, then the next round, system order
rotated each round).  Results: ``bench/results/<date>.json`` and ``.md`` (printed at the end)."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import extras, peers, report
from bench.client import raise_nofile
from bench.peers import FAILOVER, SYSTEMS, PeerError
from bench.procs import tail
from bench.workloads import WORKLOADS, Timing, Upstreams, measure_stream, measure_wrk, start_upstreams

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {','.join(SYSTEMS)}")
    p.add_argument("--workloads", default="W1,W2,W3,W4")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="1 round, short windows, small idle test")
    p.add_argument("--profile", nargs="?", const="W1,W1-assembled,W2,W3", default="",
                   help="py-spy flame graphs of infercdn, one per workload (default with the flag: "
                        f"W1,W1-assembled,W2,W3; known: {','.join(extras.PROFILES)})")
    p.add_argument("--no-idle", action="store_true", help="skip the 10,000 idle streams memory test")
    p.add_argument("--idle-streams", type=int, help="streams in the memory test (default 10000, --quick 2000)")
    p.add_argument("--rev", help="run infercdn from this git revision (a snapshot; default: the working tree)")
    p.add_argument("--baseline", metavar="REV",
                   help="also run each infercdn system from this git revision (a snapshot), named "
                        "<system>@base, in the same rounds against the same upstreams: before/after in one run")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    args.profile = [w.strip() for w in args.profile.split(",") if w.strip()]
    for w in args.profile:
        if w not in extras.PROFILES:
            p.error(f"unknown profile {w!r}; known: {', '.join(extras.PROFILES)}")
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if args.baseline:
        args.systems += [s + BASE for s in args.systems if s.startswith("infercdn")]
    if "direct" not in args.systems:
        args.systems.insert(0, "direct")  # every ratio is against direct in the same round
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.idle_streams = args.idle_streams or (2000 if args.quick else 10_000)
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


BASE = "@base"  # suffix of the systems run from --baseline's snapshot
NON_STREAM_ONLY = ("infercdn-passthrough", "pyrelay-assembled")  # systems that differ on W1 only


def install_all(systems: list[str], rev: str | None, baseline: str | None = None) -> dict[str, dict]:
    status: dict[str, dict] = {}
    for name in systems:
        log(f"install {name}")
        try:
            base = name.endswith(BASE)
            status[name] = {"status": "ok", "version": peers.install(name.removesuffix(BASE), baseline if base else rev)}
        except (PeerError, OSError, Exception) as exc:  # noqa: BLE001 - reported, never dropped
            status[name] = {"status": "install failed", "error": str(exc)[:500]}
            log(f"  {name}: install failed: {exc}")
    return status


def one(name: str, wl_name: str, ups: Upstreams, timing: Timing, work: Path, rnd: int, tree: Path,
        base_tree: Path | None = None) -> dict:
    """Start ``name`` in front of ``ups``, measure one workload, stop it; failures become records.
    A ``<system>@base`` name runs that system from ``base_tree`` (--baseline)."""
    wl = WORKLOADS[wl_name]
    rec = {"round": rnd, "workload": wl_name, "system": name}
    run = None
    if name.endswith(BASE):
        assert base_tree is not None
        tree = base_tree
    try:
        run = peers.start(name.removesuffix(BASE), ups.urls, work / f"r{rnd}-{wl_name}-{name}",
                          regions=wl.failover, tree=tree)
        if wl.tool == "wrk":
            rec.update(measure_wrk(run, wl, timing, work))
        else:
            rec.update(measure_stream(run, wl, timing, ups if wl.failover else None))
    except PeerError as exc:
        rec.update(status="start failed", error=str(exc)[:500])
    except Exception as exc:  # noqa: BLE001 - one system's failure must not end the run
        log_tail = tail(work / f"r{rnd}-{wl_name}-{name}" / f"{name}.log", 300)
        rec.update(status="run failed", error=f"{type(exc).__name__}: {exc}"[:400] + f" | log: {log_tail}")
        traceback.print_exc()
    finally:
        if run is not None:
            run.stop()
    brief = {k: rec.get(k) for k in ("status", "cpu_per_request_ms", "cpu_per_token_us", "user_per_token_us",
                                     "requests_per_s", "tokens_per_s", "ttft_p50_ms", "errors", "rss_mib")}
    log(f"  r{rnd} {wl_name} {name}: {brief}" + (f" {rec.get('failover')}" if "failover" in rec else ""))
    return rec


def run_rounds(args: argparse.Namespace, ok: list[str], timing: Timing, work: Path, tree: Path,
               base_tree: Path | None = None) -> list[dict]:
    runs: list[dict] = []
    for rnd in range(1, args.rounds + 1):
        k = (rnd - 1) % len(ok)
        order = ok[k:] + ok[:k]
        for wl_name in args.workloads:
            wl = WORKLOADS[wl_name]
            log(f"round {rnd}/{args.rounds} {wl_name}: {wl.text}")
            if wl.failover:
                for name in [s for s in order if s.removesuffix(BASE) in FAILOVER]:
                    ups = start_upstreams(2, wl.itl_ms, work / f"r{rnd}-{wl_name}-{name}-up", tree)
                    try:
                        runs.append(one(name, wl_name, ups, timing, work, rnd, tree, base_tree))
                    finally:
                        ups.stop()
                continue
            ups = start_upstreams(2, wl.itl_ms, work / f"r{rnd}-{wl_name}-up", tree)
            try:
                for name in order:
                    if name.removesuffix(BASE) in NON_STREAM_ONLY and wl.stream:
                        continue  # streams are relayed the same either way
                    runs.append(one(name, wl_name, ups, timing, work, rnd, tree, base_tree))
            finally:
                ups.stop()
    return runs


def _relative(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(peers.ROOT))
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_nofile(200_000)  # inherited by every process started here (10k streams need ~30k fds)
    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    timing = Timing(wrk_s=3, warmup_s=1, window_s=5, failover_window_s=9) if args.quick else Timing()
    args.out.mkdir(parents=True, exist_ok=True)
    peers.apt_install("wrk")
    systems = install_all(args.systems, args.rev, args.baseline)
    ok = [s for s in args.systems if systems[s]["status"] == "ok"]
    runs: list[dict] = [{"round": 0, "workload": w, "system": s, "status": st["status"], "error": st.get("error")}
                        for s, st in systems.items() if st["status"] != "ok" for w in args.workloads]
    with tempfile.TemporaryDirectory(prefix="infercdn-bench-") as tmp:
        work = Path(tmp)
        tree = (peers.snapshot(args.rev, work / "src") if args.rev and any(s.startswith("infercdn") for s in ok)
                else peers.ROOT)
        base_tree = peers.snapshot(args.baseline, work / "base-src") if args.baseline else None
        cores: dict[Path, str] = {}  # which build of the core each tree runs (bench/peers.build_core), once per tree
        for name in systems:
            if name.startswith("infercdn") and systems[name]["status"] == "ok":
                from_tree = base_tree if name.endswith(BASE) else tree
                assert from_tree is not None
                if from_tree not in cores:
                    cores[from_tree] = peers.build_core(from_tree)
                systems[name]["version"] += f", {cores[from_tree]}"
        runs += run_rounds(args, ok, timing, work, tree, base_tree)
        idle = None
        profiles: list[dict] = []
        if not args.no_idle and "infercdn" in ok:
            log(f"idle streams: {args.idle_streams} through infercdn")
            idle = extras.idle_streams(work, tree, args.idle_streams, ramp_s=4 if args.quick else 12,
                                       hold_s=5 if args.quick else 10)
            log(f"  {idle}")
        for name in args.profile if "infercdn" in ok else ():
            svg = args.out / f"{stamp}-{name.lower()}-flame.svg"
            log(f"profile: py-spy on infercdn during {name} -> {svg}")
            prof = extras.profile(work, tree, svg, name, seconds=5 if args.quick else 10)
            log(f"  {({k: v for k, v in prof.items() if k != 'inclusive_pct'})}")
            if prof.get("status") == "ok":
                prof["svg"] = _relative(prof["svg"])
            profiles.append(prof)
    report.add_ratios(runs)
    doc = {"schema": "infercdn.bench/1", "date": stamp,
           "command": "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv),
           "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
           "rounds": args.rounds, "timing": timing.__dict__,
           "workloads": {w: WORKLOADS[w].text for w in args.workloads},
           "infercdn_config": "one region/pool with both upstreams (W4: two regions, one upstream each); "
                              "load.enabled: true, health every 1 s; non-stream requests served from upstream "
                              "streams (the default) except for infercdn-passthrough (W1 only); pyrelay-assembled "
                              "(W1 only) is pyrelay assembling non-stream answers from streams",
           "systems": systems, "summary": report.summarise(runs), "runs": runs, "idle": idle,
           "profiles": profiles, "elapsed_s": round(time.monotonic() - started, 1)}
    base = args.out / stamp
    report.save(doc, base, report.markdown(doc))
    log(f"wrote {base}.json and .md in {doc['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
