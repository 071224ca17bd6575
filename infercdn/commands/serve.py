"""``infercdn gateway --config F``: run a gateway from a config file."""
from __future__ import annotations

import argparse
import sys

from gateway.config import Config
from gateway.server import run, wait_for_signal
from gateway.tuning import settle_gc
from gateway.workers import StopSignals, default_workers, wait_for_stop
from infercdn import core
from infercdn.commands import load_or_report
from infercdn.local import running_gateway, running_workers
from routing.locate import EMBEDDED, embedded_db_notice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="gateway config (YAML)")
    parser.add_argument("--host", help="listen address (overrides gateway.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides gateway.port)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="serving processes on the port (SO_REUSEPORT), supervised by this one "
                             "(default: the CPUs this process may use; 1: one process, no supervisor)")


def main(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 1
    host = args.host or cfg.gateway.host
    port = cfg.gateway.port if args.port is None else args.port
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        print(f"--workers {workers}: at least 1", file=sys.stderr)
        return 2

    async def serve() -> int:
        print(f"infercdn gateway: {core.describe()}", file=sys.stderr)
        if cfg.geoip.database == EMBEDDED:
            print(embedded_db_notice(), file=sys.stderr)
        if workers > 1:
            return await serve_workers(cfg, args.config, host, port, workers)
        async with running_gateway(cfg, host, port, config_path=args.config) as (fleet, bound):
            settle_gc()
            print(f"infercdn gateway listening on http://{host}:{bound} "
                  f"({len(cfg.pools)} pools, {len(fleet.sims)} simulated endpoints)", flush=True)
            await wait_for_signal()
        return 0

    return run(serve)


async def serve_workers(cfg: Config, config: str, host: str, port: int, workers: int) -> int:
    signals = StopSignals()  # before the workers serve: a signal while they start is not lost (PID 1)
    try:
        async with running_workers(cfg, config, host, port, workers) as (fleet, bound, supervisor):
            print(f"infercdn gateway listening on http://{host}:{bound} ({workers} workers, pids "
                  f"{' '.join(map(str, supervisor.pids))}; {len(cfg.pools)} pools, "
                  f"{len(fleet.sims)} simulated endpoints)", flush=True)
            await wait_for_stop(supervisor, signals)
    except (OSError, RuntimeError) as exc:
        print(f"infercdn gateway: {exc}", file=sys.stderr)
        return 1
    return 0
