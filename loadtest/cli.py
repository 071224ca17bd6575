"""``infercdn loadtest``: geo-aware load against any OpenAI-compatible URL.

Examples::

    infercdn loadtest --url http://127.0.0.1:8080 --concurrency 64 --requests 2000 --json out.json
    infercdn loadtest --url http://127.0.0.1:8080 --rate 200 --arrival poisson --duration 60 \\
        --clients singapore:3,london:2,virginia:1 --max-tokens lognormal:128:0.6 --html out.html
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import aiohttp

from .config import ConfigError, LoadConfig
from .engine import Engine
from .html import write_html
from .progress import progress_loop
from .report import build_report, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument("--url", required=True, help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080")
    target.add_argument("--model", help="model name (default: the first one GET /v1/models lists)")
    target.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    target.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    target.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    target.add_argument("--header", action="append", default=[], metavar="K:V", help="extra header (repeatable)")
    target.add_argument("--timeout", type=float, default=60.0, help="per-request limit in seconds (default 60)")
    target.add_argument("--ignore-eos", action="store_true", help="send vLLM's ignore_eos so outputs reach max_tokens")
    load = parser.add_argument_group("load (one of --rate or --concurrency; at least one of --requests, --duration)")
    load.add_argument("--rate", type=float, help="open loop: requests per second")
    load.add_argument("--arrival", choices=("constant", "poisson"), default="poisson")
    load.add_argument("--concurrency", type=int, help="closed loop: number of users, each waiting for its answer")
    load.add_argument("--requests", type=int, help="stop issuing after this many requests")
    load.add_argument("--duration", type=float, help="stop issuing after this many seconds")
    load.add_argument("--grace", type=float, default=10.0,
                      help="seconds after --duration for requests in flight; then they are cancelled (default 10)")
    load.add_argument("--max-inflight", type=int, default=1024, help="open loop: cap on requests in flight")
    shape = parser.add_argument_group("workload")
    shape.add_argument("--prompt-tokens", default="128", metavar="DIST",
                       help="64 | uniform:LO:HI | normal:MEAN:SD | lognormal:MEDIAN:SIGMA | choice:A,B")
    shape.add_argument("--max-tokens", default="64", metavar="DIST", help="output length, same forms")
    shape.add_argument("--clients", metavar="SPEC",
                       help="client locations with weights, e.g. singapore:3,london:2,virginia:1 or JP:1, or a YAML/JSON file")
    shape.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="OUT.json", help="write the report (schema infercdn.loadtest/1)")
    out.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")
    out.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    headers = []
    for item in args.header:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"--header {item!r}: expected K:V")
        headers.append((key.strip(), value.strip()))
    return LoadConfig(
        url=args.url, model=args.model, api_key=args.api_key, endpoint=args.endpoint, stream=args.stream,
        rate=args.rate, arrival=args.arrival, concurrency=args.concurrency, requests=args.requests,
        duration=args.duration, prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
        clients=args.clients, seed=args.seed, headers=tuple(headers), timeout=args.timeout,
        grace=args.grace, max_inflight=args.max_inflight, ignore_eos=args.ignore_eos,
    ).validate()


async def discover_model(config: LoadConfig) -> str:
    """The first model ``GET /v1/models`` lists (``config.model`` when given)."""
    if config.model:
        return config.model
    headers = dict(config.headers)
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    timeout = aiohttp.ClientTimeout(total=min(config.timeout, 10.0))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(config.url.rstrip("/") + "/v1/models", headers=headers) as resp:
            resp.raise_for_status()
            data = (await resp.json()).get("data") or []
    if not data:
        raise ConfigError(f"{config.url}/v1/models lists no model; pass --model")
    return str(data[0]["id"])


async def run_load(config: LoadConfig, progress: bool = False) -> dict:
    """Run the load and return the report document."""
    model = await discover_model(config)
    engine = Engine(config, model)
    ticker = asyncio.create_task(progress_loop(engine.data.live, config.requests)) if progress else None
    try:
        data = await engine.run()
    finally:
        if ticker:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
    return build_report(data)


def summary_text(report: dict) -> str:
    t, lat, gen = report["totals"], report["latency_ms"], report["generator"]

    def row(name: str) -> str:
        s = lat[name]
        return f"  {name:5} p50 {s['p50']} ms  p90 {s['p90']} ms  p99 {s['p99']} ms  max {s['max']} ms"

    lag = gen["schedule_lag_ms"]["p99"]
    health = (f"generator: cpu {gen['cpu_util']:.0%} of a core, event-loop lag p99 {gen['loop_lag_ms']['p99']} ms"
              + (f", schedule lag p99 {lag} ms" if lag is not None else "")
              + ("  SATURATED: figures may understate the target" if gen["saturated"] else ""))
    lines = [f"requests {t['requests']}  ok {t['ok']}  errors {t['errors']} {report['errors'] or ''}  "
             f"cancelled {t['cancelled']}  failovers {t['failovers']}",
             f"{t['requests_per_s']} req/s  {t['output_tokens_per_s']} output tok/s over {t['duration_s']} s",
             row("ttft"), row("itl"), row("e2e"), health]
    return "\n".join(lines)


def _run(coro: Coroutine[Any, Any, dict]) -> dict:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        report = _run(run_load(config, progress=not args.no_progress))
    except ConfigError as exc:
        print(f"infercdn loadtest: {exc}", file=sys.stderr)
        return 2
    except aiohttp.ClientError as exc:
        print(f"infercdn loadtest: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        write_json(report, args.json)
    if args.html:
        write_html(report, args.html)
    print(summary_text(report))
    return 0
