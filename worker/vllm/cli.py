"""``infercdn worker vllm``: launch and supervise a real vLLM OpenAI server.

    infercdn worker vllm --model DIR --served-model-name tiny-chat --port 8001 \\
        --dtype float32 --max-model-len 2048 --enforce-eager -- --seed 0

Arguments after ``--`` go to vLLM unchanged.  ``--config worker.yaml`` reads the same settings
from YAML (see ``worker.vllm.config``); flags given on the command line win.  SIGTERM or Ctrl-C
drains (running streams finish, up to ``--drain-timeout``); a second one stops at once."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

from worker import register
from worker.vllm.config import ConfigError, WorkerConfig, build_config, load_config
from worker.vllm.interpreter import ENV_VAR, cache_root
from worker.vllm.launcher import Supervisor

# flag dest -> config field (same name unless listed)
_FLAG_FIELDS = ("model", "served_model_name", "host", "port", "dtype", "max_model_len",
                "kv_cache_memory_bytes", "max_num_seqs", "enforce_eager", "python", "work_dir",
                "offline", "start_timeout_s", "drain_notice_s", "drain_timeout_s", "stop_grace_s",
                "control_host", "control_port")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="YAML worker config (flags given here win)")
    add("--model", help="model directory or hub name")
    add("--served-model-name", help="name clients use (default: --model)")
    add("--host", help="vLLM bind address (default 127.0.0.1)")
    add("--port", type=int, help="vLLM port (default 8000)")
    add("--dtype", help="vLLM --dtype (default auto; float32 on CPU)")
    add("--max-model-len", type=int)
    add("--kv-cache-memory-bytes", type=int)
    add("--max-num-seqs", type=int)
    add("--enforce-eager", action="store_true", default=None, help="no CUDA graphs / torch.compile")
    add("--python", help=f"interpreter with vLLM (default: ${ENV_VAR} or this one)")
    add("--work-dir", help="caches and the server's clean working folder "
                           "(default: $INFERCDN_CACHE/vllm-work/NAME-PORT)")
    add("--offline", action=argparse.BooleanOptionalAction, default=None,
        help="HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE (default: when --model is a local directory)")
    add("--start-timeout", dest="start_timeout_s", type=float, help="seconds to /health 200")
    add("--drain-notice", dest="drain_notice_s", type=float,
        help="seconds draining is announced before idleness ends the drain (default 2)")
    add("--drain-timeout", dest="drain_timeout_s", type=float,
        help="longest wait for running requests on stop (default 60)")
    add("--stop-grace", dest="stop_grace_s", type=float, help="SIGTERM→SIGKILL grace (default 10)")
    add("--control-host", help="bind address of the control port (default 127.0.0.1)")
    add("--control-port", type=int,
        help="serve GET /health (200 only when ready, 503 draining) and GET /status here")
    add("-v", "--verbose", action="store_true")
    register.add_arguments(parser)
    add("extra_args", nargs="*", metavar="-- VLLM_ARGS", help="passed to vLLM unchanged")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    given: dict[str, Any] = {k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k) is not None}
    if args.extra_args:
        given["extra_args"] = list(args.extra_args)
    if args.config is not None:
        return load_config(args.config, given)
    return build_config(given)


def resolve_python(cfg: WorkerConfig) -> str:
    return cfg.python or os.environ.get(ENV_VAR) or sys.executable


def resolve_work_dir(cfg: WorkerConfig) -> Path:
    if cfg.work_dir:
        return Path(cfg.work_dir)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.name)
    return cache_root() / "vllm-work" / f"{safe}-{cfg.port}"


def registrar_for(cfg: WorkerConfig, registration: register.Registration | None) -> register.Registrar | None:
    """What ``--register`` announces: the server's URL, its served name and context length, and the
    control port's /health (which says "draining") when there is one."""
    if registration is None:
        return None
    def reachable(host: str) -> str:
        return advertised or ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host)

    advertised = urlsplit(registration.advertise_url).hostname if registration.advertise_url else None
    host = reachable(cfg.host)
    control = f"http://{reachable(cfg.control_host)}:{cfg.control_port}/health" if cfg.control_port else None
    return register.Registrar.build(registration, f"http://{host}:{cfg.port}", (cfg.name,), cfg.max_model_len,
                                    control)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        registration = register.from_args(args, listen_host=cfg.host)
    except (ConfigError, ValueError) as exc:
        print(f"infercdn worker vllm: {exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(cfg, resolve_python(cfg), resolve_work_dir(cfg),
                            registrar=registrar_for(cfg, registration))
    return asyncio.run(_serve(supervisor))


async def _serve(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop)
    return await supervisor.run()


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m worker.vllm.cli")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
