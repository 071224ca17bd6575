"""One upstream simulator in its own process (so its CPU never mixes with the proxy's).

    python -m bench.upstream --port P --itl-ms 20 [--ttft-ms 0]
    PYTHONPATH=SNAPSHOT python bench/upstream.py ...   # the simulator from a git snapshot

Serves until SIGTERM/SIGINT; prints ``ready URL`` once listening."""
from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys

from worker.sim.config import SimConfig
from worker.sim.server import Simulator


async def serve(args: argparse.Namespace) -> None:
    cfg = SimConfig(model="tiny-chat", ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, rtt_ms=0,
                    max_num_seqs=100_000, default_max_tokens=64, max_model_len=100_000)
    sim = Simulator(cfg)
    url = await sim.start(host="127.0.0.1", port=args.port)
    print("ready", url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main() -> int:
    import uvloop

    p = argparse.ArgumentParser(prog="bench.upstream")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
