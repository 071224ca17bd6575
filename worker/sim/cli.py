"""``infercdn worker sim``: run one simulated vLLM server until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from worker import register
from worker.sim.config import SimConfig
from worker.sim.faults import FaultSpec
from worker.sim.server import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port; default: %(default)s)")
    parser.add_argument("--model", default=d.model, help="served model name (default: %(default)s)")
    parser.add_argument("--ttft-ms", type=float, default=d.ttft_ms, help="time to first token")
    parser.add_argument("--itl-ms", type=float, default=d.itl_ms, help="time between chunks")
    parser.add_argument("--rtt-ms", type=float, default=d.rtt_ms,
                        help="simulated network round trip added before every response")
    parser.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs,
                        help="concurrent sequences; more requests wait")
    parser.add_argument("--tokens-per-chunk", type=int, default=d.tokens_per_chunk,
                        help="tokens per SSE event")
    parser.add_argument("--max-model-len", type=int, default=d.max_model_len, help="context length")
    parser.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                        help="max_tokens when a request gives none")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of the rng (unseeded sampling, probabilistic faults)")
    parser.add_argument("--model-seed", type=int, default=d.model_seed,
                        help="the simulated weights: same value, same greedy output")
    parser.add_argument("--fault", default=None, type=_fault_arg,
                        help="fault to inject, KIND[:ARG,...], e.g. 429:retry_after=2, cut_after:tokens=5")
    register.add_arguments(parser)


def _fault_arg(text: str) -> str:
    try:
        FaultSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, rtt_ms=args.rtt_ms,
        max_num_seqs=args.max_num_seqs, tokens_per_chunk=args.tokens_per_chunk, seed=args.seed,
        max_model_len=args.max_model_len, default_max_tokens=args.default_max_tokens,
        fault=args.fault, model_seed=args.model_seed,
    )


async def serve(config: SimConfig, host: str, port: int, *, announce: Callable[[str], None] = print,
                registration: register.Registration | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly (withdrawn from the registry first)."""
    sim = Simulator(config)
    url = await sim.start(host=host, port=port)
    announce(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    registrar = None if registration is None else register.Registrar.build(
        registration, url, (config.model,), config.max_model_len)
    try:
        async with register.registered(registrar):
            await stop.wait()
    finally:
        await sim.stop()


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        registration = register.from_args(args, listen_host=args.host)
    except ValueError as exc:
        print(f"infercdn worker sim: {exc}", file=sys.stderr)
        return 2
    if registration is not None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = _loop_factory()
    with asyncio.Runner(loop_factory=runner) as run:
        run.run(serve(config, args.host, args.port, announce=lambda url: print(url, flush=True),
                      registration=registration))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
