"""The load engine: one aiohttp session with one connector sized to the concurrency, an open-loop
issuer (absolute schedule, lateness recorded) or closed-loop workers, and a hard stop.

aiohttp's client protocol sets TCP_NODELAY on every connection it makes (``BaseProtocol``).
"""
from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp

from .config import LoadConfig
from .protocol import Result, read_headers, read_json, read_stream
from .workload import RequestFactory
from .schedule import arrival_offsets, issue

LOOP_TICK_S = 0.05


@dataclass
class Live:
    """Counters the progress line reads while the run goes on."""

    issued: int = 0
    done: int = 0
    errors: int = 0
    tokens: int = 0
    inflight: int = 0


@dataclass
class RunData:
    """Everything a run produced; :mod:`loadtest.report` turns it into the report."""

    config: LoadConfig
    model: str
    results: list[Result] = field(default_factory=list)
    schedule_lags: list[float] = field(default_factory=list)
    loop_lags: list[float] = field(default_factory=list)
    started_at: float = 0.0
    wall_s: float = 0.0
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    live: Live = field(default_factory=Live)
    event_loop: str = "asyncio"


class Engine:
    def __init__(self, config: LoadConfig, model: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.cfg = config
        self.clock = clock
        self.data = RunData(config, model)
        self.factory = RequestFactory(config, model)
        self._tasks: set[asyncio.Task] = set()
        self._t0 = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._url = config.url.rstrip("/") + ("/v1/chat/completions" if config.endpoint == "chat"
                                              else "/v1/completions")

    async def run(self) -> RunData:
        cfg = self.cfg
        connector = aiohttp.TCPConnector(limit=self.connections(), limit_per_host=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=cfg.timeout, sock_connect=min(cfg.timeout, 10.0))
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self.data.started_at = time.time()
        self.data.event_loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        self._t0 = self.clock()
        ticker = asyncio.create_task(self._tick_loop())
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         headers=self.factory.base_headers(),
                                         skip_auto_headers=("User-Agent",)) as session:
            self._session = session
            try:
                await self._drive()
            finally:
                ticker.cancel()
                await self._stop_all()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        self.data.wall_s = self.clock() - self._t0
        self.data.cpu_user_s = usage1.ru_utime - usage0.ru_utime
        self.data.cpu_sys_s = usage1.ru_stime - usage0.ru_stime
        return self.data

    def connections(self) -> int:
        return self.cfg.concurrency or self.cfg.max_inflight

    async def _drive(self) -> None:
        cfg = self.cfg
        hard = None if cfg.duration is None else cfg.duration + cfg.grace
        if cfg.rate:
            main = asyncio.create_task(self._open_loop())
        else:
            main = asyncio.create_task(self._closed_loop())
        try:
            await asyncio.wait_for(asyncio.shield(main), hard)
        except asyncio.TimeoutError:
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)

    async def _open_loop(self) -> None:
        cfg = self.cfg
        slots = asyncio.Semaphore(cfg.max_inflight)

        async def launch(i: int) -> None:
            await slots.acquire()
            task = asyncio.create_task(self._one(i, self.clock() - self._t0))
            task.add_done_callback(lambda _t: slots.release())
            self._track(task)

        offsets = arrival_offsets(cfg.rate or 1.0, cfg.arrival, self.factory.arrival_rng)
        await issue(offsets, launch, start=self._t0, clock=self.clock, max_requests=cfg.requests,
                    duration=cfg.duration, lags=self.data.schedule_lags)
        await self._wait_inflight()

    async def _closed_loop(self) -> None:
        counter = iter(range(self.cfg.requests if self.cfg.requests is not None else 1 << 62))
        workers = [asyncio.create_task(self._worker(counter)) for _ in range(self.cfg.concurrency or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, counter: Iterator[int]) -> None:
        duration = self.cfg.duration
        for i in counter:
            now = self.clock() - self._t0
            if duration is not None and now >= duration:
                return
            await self._one(i, now)

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_inflight(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _stop_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _tick_loop(self) -> None:
        lags = self.data.loop_lags
        while True:
            due = self.clock() + LOOP_TICK_S
            await asyncio.sleep(LOOP_TICK_S)
            lags.append(max(0.0, self.clock() - due))

    async def _one(self, index: int, scheduled: float) -> None:
        city, ip, body = self.factory.make(index)
        r = Result(index, city, scheduled)
        live = self.data.live
        live.issued += 1
        live.inflight += 1
        sent = self.clock()
        r.start = sent - self._t0
        try:
            await self._exchange(r, body, ip, sent)
        except asyncio.CancelledError:
            r.error = "cancelled"
            raise
        finally:
            self._finish(r, sent)

    async def _exchange(self, r: Result, body: bytes, ip: str, sent: float) -> None:
        assert self._session is not None
        try:
            async with self._session.post(self._url, data=body, headers={"X-Forwarded-For": ip}) as resp:
                r.status = resp.status
                read_headers(r, resp.headers)
                if resp.status != 200:
                    r.error = f"http_{resp.status}"
                elif self.cfg.stream:
                    await read_stream(r, resp.content.iter_any(), sent, self.clock)
                else:
                    read_json(r, await resp.read(), sent, self.clock())
        except asyncio.TimeoutError:
            r.error = "timeout"
        except aiohttp.ClientConnectorError:
            r.error = "connect"
        except aiohttp.ClientPayloadError:
            r.error = "truncated"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            r.error = "truncated" if r.status else "disconnect"
        except aiohttp.ClientError:
            r.error = "client_error"

    def _finish(self, r: Result, sent: float) -> None:
        end = self.clock()
        r.e2e = end - sent
        r.end = end - self._t0
        r.ok = r.error is None
        live = self.data.live
        live.inflight -= 1
        live.done += 1
        if r.ok:
            live.tokens += r.completion_tokens
        elif r.error != "cancelled":
            live.errors += 1
        self.data.results.append(r)
