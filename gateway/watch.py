"""Config-file watch (``gateway.config_watch_s``): a changed file reloads as SIGHUP does.

A file is "changed" when what its path leads to differs: another resolved path, inode, size or
modification time.  That covers an edit in place, an editor's write-and-rename, and the way
Kubernetes updates a mounted ConfigMap: the mounted path is a symlink to ``..data/<file>``, and
``..data`` itself is a symlink swapped atomically to a new timestamped folder.  Stat, not
inotify: inotify on the path misses the swap of a parent symlink, and a stat every couple of
seconds costs nothing.  A path that does not resolve for a moment (mid-swap) is not a change."""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from gateway.background import running
from gateway.reload import reload_on_signal
from gateway.state import CONFIG_PATH, SNAPSHOT

log = logging.getLogger("infercdn.reload")

Signature = tuple[str, int, int, int, int]


def signature(path: str | Path) -> Signature | None:
    """What ``path`` leads to now, or None when it does not resolve to a file."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


async def watch_file(path: str | Path, interval_s: float, on_change: Callable[[], None],
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Call ``on_change`` each time ``path`` leads to other content; runs until cancelled."""
    last = signature(path)
    while True:
        await sleep(interval_s)
        now = signature(path)
        if now is not None and now != last:
            last = now
            log.info("config file %s changed", path)
            try:
                on_change()
            except Exception:  # a bug in the reload must not end the watch
                log.exception("reload after a change of %s failed", path)


async def config_watch(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context of a single-process gateway started from a config file."""
    interval = app[SNAPSHOT].current.config.gateway.config_watch_s
    path = app.get(CONFIG_PATH)
    if path is None or interval <= 0:
        yield
        return
    async with running(watch_file(path, interval, lambda: reload_on_signal(app))):
        yield
