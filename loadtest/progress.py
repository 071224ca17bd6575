"""A single progress line on stderr, about once a second: done/issued, in flight, live
requests/s and tokens/s over the last interval, errors.  No dependencies."""
from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from .engine import Live


def format_line(live: Live, elapsed: float, d_done: int, d_tokens: int, dt: float, total: int | None) -> str:
    of = f"/{total}" if total else ""
    rate = d_done / dt if dt > 0 else 0.0
    tps = d_tokens / dt if dt > 0 else 0.0
    return (f"[{elapsed:6.1f}s] done {live.done}{of}  in flight {live.inflight}  "
            f"{rate:8.1f} req/s  {tps:10.1f} tok/s  errors {live.errors}")


async def progress_loop(live: Live, total: int | None, stream: TextIO | None = None,
                        interval: float = 1.0) -> None:
    """Print until cancelled (to stderr by default); on a terminal the line is rewritten in place."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    start = last_t = time.perf_counter()
    last_done, last_tokens = live.done, live.tokens
    try:
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            line = format_line(live, now - start, live.done - last_done, live.tokens - last_tokens,
                               now - last_t, total)
            stream.write(("\r" + line + "\x1b[K") if tty else line + "\n")
            stream.flush()
            last_t, last_done, last_tokens = now, live.done, live.tokens
    finally:
        if tty:
            stream.write("\n")
            stream.flush()
