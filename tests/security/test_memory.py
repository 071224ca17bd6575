"""Defect 6 where small sizes cannot show it: a gateway process with the default
``upstream_limits`` keeps a bounded peak memory while pools send hundreds of megabytes
(a non-stream body, an endless stream to a non-stream client, headers, one endless event, an
error body), and gives back what clients that never read held once they leave.

The gateway runs as a subprocess (``infercdn gateway``) so its RSS is its own; the pools are
in this process.  Old code: +200 MB for the body alone.  The second test (streams whose clients
never read, each having pushed more than its resume buffer) guards the release at the end of a
stream; at this scale (25 streams) the old code passed it too."""
from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import yaml

from tests.conftest import base_config
from tests.security.evil import FIRST, SSE_HEAD, chunk, evil_pools, endless
from tests.security.helpers import CHAT, call
from tests.security.test_upstream import endless_event, endless_tokens, huge_error, huge_head

SENT = 200 << 20  # what each bad pool tries to send
PEAK_BUDGET = 120 << 20  # default bounds: 16 MB body (+ a copy), 4 MB event, 64 KB head and error body
KEPT_BUDGET = 48 << 20
RESUME_BUFFER = 4 << 20  # upstream_limits.resume_buffer_bytes


async def huge_body(w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % SENT)
    await endless(w, b"{" * 65536, framed=False, max_bytes=SENT)


FLOODED: list[int] = []  # bytes each flood has written so far


async def token_flood(w: asyncio.StreamWriter) -> None:
    w.write(SSE_HEAD)
    slot = len(FLOODED)
    FLOODED.append(0)
    piece = chunk(FIRST * 64)
    while FLOODED[slot] < (32 << 20) and not w.is_closing():
        w.write(piece)
        FLOODED[slot] += len(piece)
        await w.drain()


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


@contextlib.asynccontextmanager
async def gateway_process(config: dict, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    errors = tmp_path / "gw.stderr"
    with open(errors, "wb") as err:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "infercdn.cli", "gateway", "--config",
                                                    str(path), "--port", "0", stdout=asyncio.subprocess.PIPE,
                                                    stderr=err)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert "listening on http://" in line, errors.read_text()
        yield line.split("http://", 1)[1].split()[0].join(("http://", "")), proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def fleet(scripts: dict[str, str]) -> dict:
    data = base_config({})
    data["pools"] = [{"name": f"p-{model}", "region": "eu-west", "models": [model],
                      "endpoints": [{"id": model, "url": url}]} for model, url in scripts.items()]
    data["gateway"].update(access_log="off", drain_timeout_s=1)
    data["models"] = {"*": {"ttft_deadline_s": 20, "stall_timeout_s": 20, "total_deadline_s": 60}}
    if "body" in scripts:
        data["models"]["body"] = {"non_stream": "passthrough", "ttft_deadline_s": 20, "total_deadline_s": 60}
    data["health"] = {"interval_s": 30}
    data["load"] = {"enabled": False}
    return data


async def test_peak_memory_is_bounded_whatever_the_pools_send(tmp_path: Path) -> None:
    async with evil_pools(huge_body, endless_tokens, huge_head, endless_event, huge_error) as pools:
        names = ["body", "tokens", "head", "event", "error"]
        async with gateway_process(fleet({n: p.url for n, p in zip(names, pools)}), tmp_path) as (url, pid):
            assert (await call(url, path="/healthz", method="GET"))[0] == 200
            _, peak0 = rss(pid)
            for name in names:
                status, _, _ = await call(url, {**CHAT, "model": name})
                assert status in (502, 503), (name, status)  # the attempt failed: nothing else serves it
            _, peak = rss(pid)
            assert peak - peak0 < PEAK_BUDGET, f"peak RSS grew {(peak - peak0) >> 20} MB"


async def test_streams_whose_clients_never_read_are_given_back(tmp_path: Path) -> None:
    FLOODED.clear()
    async with evil_pools(token_flood) as (pool,):
        async with gateway_process(fleet({"tiny-chat": pool.url}), tmp_path) as (url, pid):
            assert (await call(url, path="/healthz", method="GET"))[0] == 200
            before, _ = rss(pid)
            port = int(url.rsplit(":", 1)[1])
            body = b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "a"}], "stream": true}'
            conns = []
            for _ in range(25):  # each opens a stream and never reads it
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
                conns.append(writer)
            for _ in range(600):  # up to 30 s, until each stream has pushed its resume buffer's worth
                if pool.posts >= 25 and len(FLOODED) >= 25 and min(FLOODED) >= RESUME_BUFFER:
                    break
                await asyncio.sleep(0.05)
            assert pool.posts == 25
            for writer in conns:
                writer.transport.abort()
            for _ in range(100):  # up to 20 s, until the gateway has let go of them
                await asyncio.sleep(0.2)
                after, _ = rss(pid)
                if after - before < KEPT_BUDGET:
                    break
            assert after - before < KEPT_BUDGET, f"RSS {(after - before) >> 20} MB above its start"
