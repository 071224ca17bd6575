"""``infercdn gateway --config F``: run a gateway from a config file."""
from __future__ import annotations

import argparse
import sys

from gateway.commands import load_or_report
from gateway.server import run, running_gateway, wait_for_signal
from gateway.tuning import settle_gc
from routing.locate import EMBEDDED, embedded_db_notice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="gateway config (YAML)")
    parser.add_argument("--host", help="listen address (overrides gateway.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides gateway.port)")


def main(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 1
    host = args.host or cfg.gateway.host
    port = cfg.gateway.port if args.port is None else args.port

    async def serve() -> int:
        if cfg.geoip.database == EMBEDDED:
            print(embedded_db_notice(), file=sys.stderr)
        async with running_gateway(cfg, host, port, config_path=args.config) as (fleet, bound):
            settle_gc()
            print(f"infercdn gateway listening on http://{host}:{bound} "
                  f"({len(cfg.pools)} pools, {len(fleet.sims)} simulated endpoints)", flush=True)
            await wait_for_signal()
        return 0

    return run(serve)
