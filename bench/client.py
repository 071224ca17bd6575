"""A lean closed-loop streaming client, run in its own process so its CPU never mixes with the proxy's.

Each of ``--concurrency`` users holds one keep-alive connection (raw asyncio protocol parsed with
httptools, TCP_NODELAY) and sends the next request when the previous answer ends.  Only what
happens inside the measured window ``[--t0, --t1]`` (CLOCK_MONOTONIC, shared with the
orchestrator) is counted: tokens that arrive in it, requests that end in it, time to first token of
requests that start in it.  Prints one JSON document on stdout.

    python -m bench.client --url http://127.0.0.1:P --concurrency 200 --max-tokens 256 \\
        --t0 T0 --t1 T1 [--records]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import httptools

now = time.monotonic


class Exchange(asyncio.Protocol):
    """One connection; ``request()`` sends one request and resolves when its answer ends."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[str] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, payload: bytes) -> asyncio.Future[str]:
        self.parser = httptools.HttpResponseParser(self)
        self.sent = now()
        self.first = 0.0
        self.last = 0.0
        self.max_gap = 0.0
        self.region = ""
        self.tail = b""
        self.tokens = 0
        self.error_event = False
        self.done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(payload)
        return self.done

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-infercdn-region":
            self.region = value.decode()

    def on_body(self, body: bytes) -> None:
        t = now()
        if self.last and t - self.last > self.max_gap:
            self.max_gap = t - self.last
        self.last = t
        if not self.first:
            self.first = t
            stats = self.stats
            stats.open += 1
            stats.open_peak = max(stats.open_peak, stats.open)
            if self.sent >= stats.t0 and t <= stats.t1:
                stats.ttft.append(t - self.sent)
        n = body.count(b"data:")
        if b"[DONE]" in body:
            n -= 1
        if b'"error"' in body:
            self.error_event = True
            if len(self.stats.error_samples) < 3:
                self.stats.error_samples.append(body[:300].decode(errors="replace"))
        self.tokens += n
        self.tail = (self.tail + body)[-32:]
        if self.stats.t0 <= t <= self.stats.t1:
            self.stats.tokens += n

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            outcome = f"http_{status}"
        elif self.error_event:
            outcome = "error_event"
        elif self.stats.stream and b"[DONE]" not in self.tail:
            outcome = "no_done"
        else:
            outcome = "ok"
        if self.done and not self.done.done():
            self.done.set_result(outcome)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self._fail("bad_http")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail("reset" if self.first == 0 else "cut_mid_stream")

    def _fail(self, kind: str) -> None:
        if self.done and not self.done.done():
            self.done.set_result(kind)


class Stats:
    def __init__(self, t0: float, t1: float, stream: bool) -> None:
        self.t0, self.t1, self.stream = t0, t1, stream
        self.tokens = 0
        self.completed = 0
        self.open = 0
        self.error_samples: list[str] = []
        self.open_peak = 0
        self.outcomes: Counter[str] = Counter()
        self.ttft: list[float] = []
        self.records: list[tuple[float, str, str]] = []


async def user(host: str, port: int, payload: bytes, stats: Stats, keep: bool, t_end: float,
               delay: float) -> None:
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    conn: Exchange | None = None
    while now() < t_end:
        if conn is None or conn.lost:
            try:
                _, conn = await loop.create_connection(lambda: Exchange(stats), host, port)
            except OSError:
                stats.outcomes["connect"] += now() >= stats.t0
                await asyncio.sleep(0.05)
                continue
        fut = conn.request(payload)
        try:
            outcome = await asyncio.wait_for(fut, max(0.01, t_end - now()))
        except asyncio.TimeoutError:
            break
        t = now()
        if conn.first:
            stats.open -= 1
        if stats.t0 <= t <= stats.t1:
            stats.completed += outcome == "ok"
            stats.outcomes[outcome] += 1
        elif t > stats.t1 and conn.sent <= stats.t1 and outcome != "ok":
            stats.outcomes[outcome] += 1  # a failure of a request started in the window still counts
        if keep:
            stats.records.append((round(conn.sent, 4), conn.region, outcome, round(t, 4), round(conn.max_gap, 4)))
        if outcome != "ok" and conn.transport is not None:
            conn.transport.close()
            conn.lost = True
    if conn is not None and conn.transport is not None:
        conn.transport.abort()


def build_payload(host: str, port: int, path: str, max_tokens: int, stream: bool, headers: list[str]) -> bytes:
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "Say something."}],
                       "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}).encode()
    extra = "".join(f"{h}\r\n" for h in headers)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def main_async(args: argparse.Namespace) -> dict:
    stats = Stats(args.t0, args.t1, not args.no_stream)
    users = []
    urls = args.url
    for i in range(args.concurrency):
        u = urlsplit(urls[i % len(urls)])
        host, port = u.hostname or "127.0.0.1", u.port or 80
        payload = build_payload(host, port, "/v1/chat/completions", args.max_tokens, not args.no_stream, args.header)
        delay = args.ramp * i / args.concurrency
        users.append(user(host, port, payload, stats, args.records, args.t1 + args.grace, delay))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*users)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    window = args.t1 - args.t0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"window_s": window, "completed": stats.completed, "tokens": stats.tokens,
            "requests_per_s": stats.completed / window, "tokens_per_s": stats.tokens / window,
            "outcomes": dict(stats.outcomes),
            "errors": sum(v for k, v in stats.outcomes.items() if k != "ok"),
            "ttft_ms": {"p50": _ms(pct(stats.ttft, 0.5)), "p99": _ms(pct(stats.ttft, 0.99)), "n": len(stats.ttft)},
            "open_peak": stats.open_peak, "error_samples": stats.error_samples, "client_cpu_s": round(cpu, 3), "client_cpu_util": round(cpu / max(1e-9, now() - args.start), 3),
            "records": stats.records}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.client")
    p.add_argument("--url", action="append", required=True, help="base URL (repeat: users spread round-robin)")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    p.add_argument("--t0", type=float, required=True, help="window start, time.monotonic()")
    p.add_argument("--t1", type=float, required=True, help="window end, time.monotonic()")
    p.add_argument("--grace", type=float, default=0.0, help="keep going this long after t1")
    p.add_argument("--ramp", type=float, default=1.0, help="spread the users' first requests over this many s")
    p.add_argument("--records", action="store_true",
                   help="include (sent, region, outcome, ended, longest gap between body reads) per request")
    args = p.parse_args(argv)
    args.start = now()
    return args


def raise_nofile(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def main(argv: list[str] | None = None) -> int:
    import uvloop
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    out = uvloop.run(main_async(args))
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
