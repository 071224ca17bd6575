"""``infercdn up``: the embedded default — a gateway in Frankfurt and three simulated
regional pools on this machine, in one command."""
from __future__ import annotations

import argparse
import sys

from gateway.config import ConfigError, load_config
from gateway.server import run, running_gateway, wait_for_signal
from routing.locate import EMBEDDED, embedded_db_notice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--config", "-c", help="use this config instead of the embedded default")
    parser.add_argument("--in-process", action="store_true",
                        help="run the simulated pools inside the gateway process (default: one process each)")


def banner(port: int, regions: list[str], pids: dict[str, list[int]]) -> str:
    base = f"http://127.0.0.1:{port}"
    kill = [f"  {pool}: kill {' '.join(map(str, p))}" for pool, p in pids.items()]
    return "\n".join([
        f"infercdn is up: gateway {base}, simulated regions: {', '.join(regions)}",
        *(["simulated endpoints (kill a pool's processes to watch the gateway fail over):", *kill] if kill else []),
        "try it (X-Forwarded-For places the client; 103.4.96.1 is Singapore):",
        f"  curl -sN {base}/v1/chat/completions -H 'Content-Type: application/json' "
        "-H 'X-Forwarded-For: 103.4.96.1' -D - \\",
        "    -d '{\"model\": \"tiny-chat\", \"stream\": true, "
        "\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
        f"  explain the route: infercdn route --ip 103.4.96.1 --model tiny-chat   |   {base}/metrics",
        "stop with Ctrl-C",
    ])


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1

    async def serve() -> int:
        if cfg.geoip.database == EMBEDDED:
            print(embedded_db_notice(), file=sys.stderr)
        async with running_gateway(cfg, args.host, args.port, sim_processes=not args.in_process) as (fleet, bound):
            print(banner(bound, [r.name for r in cfg.regions], fleet.pids), flush=True)
            await wait_for_signal()
        return 0

    return run(serve)
