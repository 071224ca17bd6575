"""The simulated engine: a deterministic "model", sequences, the scheduler and the prefix cache.

The model's next token is a pure function of the context (the last three token ids and the
context length) and a salt: at temperature 0 the salt is ``model_seed`` alone, so resuming with
``prompt = prompt ids + generated ids`` and the remaining ``max_tokens`` reproduces the rest of
the uninterrupted generation exactly; with sampling and a request ``seed`` the salt mixes in
that seed (so a seeded resume is exact too); without a seed it mixes in a draw from the
simulator's seeded rng (a different but reproducible sample per request).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from worker.sim.tokenizer import BYTE_BASE, Tokenizer

_MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Model:
    """Picks the next token from the context: mostly words, some punctuation, rare newlines."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        pieces = tokenizer.pieces
        words = [i for i, p in enumerate(pieces)
                 if isinstance(p, str) and p.startswith(" ") and p[1:].islower()]
        self.words: tuple[int, ...] = tuple(words)
        self.capitals: tuple[int, ...] = tuple(tokenizer.ids[" " + pieces[i][1:].capitalize()]  # type: ignore[index]
                                               for i in words)
        self.period = BYTE_BASE + ord(".")
        self.comma = BYTE_BASE + ord(",")
        self.newline = BYTE_BASE + ord("\n")

    def next_token(self, ctx: Sequence[int], salt: int) -> int:
        n = len(ctx)
        a = ctx[-1] if n else 0
        b = ctx[-2] if n > 1 else 0
        c = ctx[-3] if n > 2 else 0
        h = mix64(salt ^ mix64((a << 42) ^ (b << 21) ^ c ^ (n << 56)))
        r = h % 100
        if a == self.period or a == self.newline:
            return self.newline if r < 10 and a == self.period else self.capitals[(h >> 8) % len(self.capitals)]
        if r < 6:
            return self.period
        if r < 9 and a != self.comma:
            return self.comma
        return self.words[(h >> 8) % len(self.words)]


def sampling_salt(model_seed: int, temperature: float, seed: int | None, draw: int) -> int:
    """The salt of a request: greedy, seeded sampling, or an rng draw."""
    if temperature == 0.0:
        return mix64(model_seed)
    if seed is not None:
        return mix64(mix64(model_seed) ^ mix64(seed & _MASK) ^ 0x5EED)
    return mix64(mix64(model_seed) ^ draw)


class Generation:
    """One generation in progress: the context grows as tokens are produced."""

    __slots__ = ("model", "texts", "ctx", "n_prompt", "max_tokens", "salt", "stop", "text",
                 "generated", "finish_reason", "stop_reason")

    def __init__(self, model: Model, tokenizer: Tokenizer, prompt_ids: Sequence[int],
                 max_tokens: int, salt: int, stop: Sequence[str] = ()) -> None:
        self.model = model
        self.texts = tokenizer.texts
        self.ctx = list(prompt_ids)
        self.n_prompt = len(prompt_ids)
        self.max_tokens = max_tokens
        self.salt = salt
        self.stop = tuple(s for s in stop if s)
        self.text = ""  # generated text, kept only when stop strings are in play
        self.generated = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None

    def step(self, k: int) -> tuple[list[int], str]:
        """Produce up to ``k`` tokens; return their ids and the text to send."""
        if self.stop:
            return self._step_with_stop(k)
        ids = self._produce(min(k, self.max_tokens - self.generated))
        if self.generated >= self.max_tokens:
            self.finish_reason = "length"
        texts = self.texts
        return ids, "".join([texts[t] for t in ids])

    def _produce(self, n: int) -> list[int]:
        ctx, model, salt = self.ctx, self.model, self.salt
        for _ in range(n):
            ctx.append(model.next_token(ctx, salt))
        self.generated += n
        return ctx[len(ctx) - n:] if n else []

    def _step_with_stop(self, k: int) -> tuple[list[int], str]:
        """Stop strings are checked after each token; the stop string is not sent (text sent by
        an earlier step is not recalled, so a stop string spanning two chunks leaks its head)."""
        ids: list[int] = []
        step_start = len(self.text)
        for _ in range(min(k, self.max_tokens - self.generated)):
            ids += self._produce(1)
            piece = self.texts[ids[-1]]
            self.text += piece
            for s in self.stop:
                at = self.text.find(s, max(0, len(self.text) - len(piece) - len(s) + 1))
                if at >= 0:
                    out = self.text[step_start:max(at, step_start)]
                    self.text = self.text[:at]
                    self.finish_reason, self.stop_reason = "stop", s
                    return ids, out
        if self.generated >= self.max_tokens:
            self.finish_reason = "length"
        return ids, self.text[step_start:]

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Scheduler:
    """At most ``max_num_seqs`` sequences run; the rest wait in arrival order.  A request with
    several choices takes one slot per choice (at most ``max_num_seqs``), all at once."""

    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.running = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self.on_change: Callable[[], None] = lambda: None

    @property
    def waiting(self) -> int:
        return sum(k for _, k in self._waiters)

    def weight(self, seqs: int) -> int:
        return max(1, min(seqs, self.max_num_seqs))

    async def acquire(self, seqs: int = 1) -> None:
        k = self.weight(seqs)
        if self.running + k <= self.max_num_seqs and not self._waiters:
            self.running += k
            self.on_change()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (fut, k)
        self._waiters.append(entry)
        self.on_change()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(seqs)  # the slots were handed to us just as we were cancelled
            elif entry in self._waiters:  # release() may have dropped it already
                self._waiters.remove(entry)
                self._grant()
                self.on_change()
            raise

    def release(self, seqs: int = 1) -> None:
        """Free the slots and hand them to the waiters first in line that fit."""
        self.running -= self.weight(seqs)
        self._grant()
        self.on_change()

    def _grant(self) -> None:
        while self._waiters:
            fut, k = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.running + k > self.max_num_seqs:
                return
            self._waiters.popleft()
            self.running += k
            fut.set_result(None)


class PrefixCache:
    """Block-level prefix cache bookkeeping (hash chain per full block, LRU-bounded), enough to
    make ``vllm:prefix_cache_hits_total`` move when prompts share a prefix."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def query(self, ids: Sequence[int]) -> int:
        """Record a prompt; return how many of its tokens were already cached."""
        hits, h, hitting = 0, 0, True
        bs = self.block_size
        for start in range(0, len(ids) - bs + 1, bs):
            h = hash((h, *ids[start:start + bs]))
            if hitting and h in self._blocks:
                self._blocks.move_to_end(h)
                hits += bs
                continue
            hitting = False
            self._blocks[h] = None
            if len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        return hits
