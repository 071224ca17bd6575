"""The simulator's state, shared by its handlers: config, engine parts, counters, faults."""
from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from worker.sim.config import SimConfig
from worker.sim.engine import Generation, Model, PrefixCache, Scheduler, sampling_salt
from worker.sim.faults import FAILING_KINDS, FaultController
from worker.sim.logprobs import Logprobs
from worker.sim.metrics import SimStats
from worker.sim.protocol import GenRequest
from worker.sim.responses import Encoder
from worker.sim.tokenizer import Tokenizer


class SimCore:
    """Everything one simulator owns; no globals, so tests can run many in one process."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.tokenizer = Tokenizer()
        self.model = Model(self.tokenizer)
        self.logprobs = Logprobs(self.model, self.tokenizer)
        self.scheduler = Scheduler(config.max_num_seqs)
        self.stats = SimStats(self.scheduler)
        self.faults = FaultController(clock, config.seed)
        self.prefix_cache = PrefixCache(config.block_size, config.kv_cache_tokens // config.block_size)
        self.rng = random.Random(config.seed)
        self.closing = asyncio.Event()
        self.live: set[asyncio.BaseTransport] = set()
        self.active: set[Generation] = set()  # generations holding a scheduler slot (tests read it)
        self._watchers: list[asyncio.Future[None]] = []
        self.scheduler.on_change = self.notify
        if config.fault:
            self.faults.set(config.fault)

    def notify(self) -> None:
        """Wake :meth:`wait_for` callers (cheap when nobody waits)."""
        if self._watchers:
            for fut in self._watchers:
                if not fut.done():
                    fut.set_result(None)
            self._watchers.clear()

    async def wait_for(self, predicate: Callable[[SimStats], bool], timeout: float) -> None:
        """Return once ``predicate(stats)`` holds; raise TimeoutError after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate(self.stats):
                fut: asyncio.Future[None] = loop.create_future()
                self._watchers.append(fut)
                await fut

    def encoder(self, req: GenRequest) -> Encoder:
        return Encoder(req, self.config.model, self.logprobs, self.config.version)

    def new_generation(self, req: GenRequest) -> Generation:
        """The generation of a one-choice request (the first choice of any other)."""
        return self.new_generations(req)[0]

    def new_generations(self, req: GenRequest) -> list[Generation]:
        """One generation per choice, in choice-index order (prompt-major: index ``p * n + i``).
        With a ``seed``, sample ``i`` is seeded ``seed + i`` as in vLLM, so it is what ``n = 1``
        with ``seed + i`` gives (and resumes like it)."""
        gens = []
        for p, prompt in enumerate(req.prompts):
            for i in range(req.n):
                draw = self.rng.getrandbits(64) if req.temperature > 0 and req.seed is None else 0
                seed = None if req.seed is None else req.seed + i  # vLLM seeds sample i with seed + i
                salt = sampling_salt(self.config.model_seed, req.temperature, seed, draw)
                budget = req.budgets[p] if req.budgets else req.max_tokens
                gens.append(Generation(self.model, self.tokenizer, prompt, budget, salt, req.stop))
        return gens

    @asynccontextmanager
    async def running(self, gens: Generation | list[Generation]) -> AsyncIterator[None]:
        """Hold one scheduler slot per generation (waiting for them if taken) while they run;
        account their prompts, their KV usage and their queue time."""
        gens = gens if isinstance(gens, list) else [gens]
        loop = asyncio.get_running_loop()
        queued = loop.time()
        await self.scheduler.acquire(len(gens))
        stats = self.stats
        self.active.update(gens)
        try:
            stats.queue_time.observe(loop.time() - queued)
            for gen in gens:
                stats.prompt_tokens_total += gen.n_prompt
                stats.prefix_queries += gen.n_prompt
                stats.prefix_hits += self.prefix_cache.query(gen.ctx[: gen.n_prompt])
                stats.kv_tokens += gen.n_prompt
            yield
        finally:
            self.active.difference_update(gens)
            for gen in gens:
                stats.kv_tokens -= gen.n_prompt + gen.generated
            self.scheduler.release(len(gens))

    def record_fault(self, kind: str, *, health: bool = False) -> None:
        self.stats.faults[f"health:{kind}" if health else kind] += 1
        if kind in FAILING_KINDS and not health:
            self.stats.requests_failed += 1
        self.notify()

    async def wait_closing(self, transport: asyncio.BaseTransport | None) -> None:
        """Stay silent until the simulator stops (or the client leaves and cancels us)."""
        await self.closing.wait()
        if transport is not None:
            transport.abort()

    def abort_live(self) -> None:
        self.closing.set()
        for transport in list(self.live):
            transport.abort()
        self.live.clear()
