"""Simulated log-probabilities in vLLM's shapes.

Values are a pure function of the context before a token (like the model's choice), so a resumed
generation reports the same logprobs as the uninterrupted one.  A generated token is always the
most likely one (rank 1); its ``k - 1`` runners-up follow with lower values.  A prompt token is
ranked below the ``k`` alternatives, so vLLM's "top k plus the actual token" dicts have ``k + 1``
entries there, as with the real model.

Completions: ``{"text_offset", "token_logprobs", "tokens", "top_logprobs": [{text: lp}]}``, and
``prompt_logprobs`` (``[null, {"id": {"decoded_token", "logprob", "rank"}}, ...]``) with echo.
Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.sim.engine import Model, mix64
from worker.sim.tokenizer import Tokenizer

_SPREAD = 1000


class Logprobs:
    """Computes the simulated logprobs of the tokens of one simulator's model."""

    def __init__(self, model: Model, tokenizer: Tokenizer) -> None:
        self.words = model.words
        self.texts = tokenizer.texts

    def _hash(self, ctx: Sequence[int], pos: int) -> int:
        a = ctx[pos - 1] if pos > 0 else 0
        b = ctx[pos - 2] if pos > 1 else 0
        return mix64((a << 40) ^ (b << 20) ^ pos ^ 0x10B9)

    def top(self, ctx: Sequence[int], pos: int, k: int, *, prompt: bool = False) -> list[tuple[int, float, int]]:
        """``(token, logprob, rank)`` of the token at ``ctx[pos]`` first, then its alternatives:
        a generated token is the top one, followed by ``k - 1`` runners-up; a prompt token is
        followed by the ``k`` tokens the model preferred."""
        h = self._hash(ctx, pos)
        best = -(6.5 + (h % _SPREAD) / _SPREAD)
        token = ctx[pos]
        wanted = k if prompt else k - 1
        alts: list[int] = []
        words, texts, j = self.words, self.texts, (h >> 8) % len(self.words)
        while len(alts) < wanted:
            alt = words[j % len(words)]
            j += 1
            if texts[alt] != texts[token] and alt not in alts:
                alts.append(alt)
        if prompt:
            own = (token, round(best - 0.5 - ((h >> 12) % _SPREAD) / _SPREAD, 6), k + 1 + (h >> 24) % 500)
            return [own] + [(t, round(best - 0.01 * r, 6), r + 1) for r, t in enumerate(alts)]
        return [(token, best, 1)] + [(t, round(best - 0.01 * (r + 1), 6), r + 2) for r, t in enumerate(alts)]

    def completion(self, ctx: Sequence[int], start: int, end: int, k: int, offset: int,
                   n_prompt: int) -> tuple[dict[str, Any], int]:
        """The completions ``logprobs`` object of ``ctx[start:end]``, whose text begins at
        ``offset`` in the choice's text (positions below ``n_prompt`` are echoed prompt tokens,
        the very first of which has no logprob); returns it and the offset after it."""
        offsets, lps, tokens, tops = [], [], [], []
        texts = self.texts
        for pos in range(start, end):
            text = texts[ctx[pos]]
            offsets.append(offset)
            tokens.append(text)
            offset += len(text)
            if pos == 0:
                lps.append(None)
                tops.append(None)
                continue
            entries = self.top(ctx, pos, k, prompt=pos < n_prompt)
            lps.append(entries[0][1])
            tops.append({texts[t]: lp for t, lp, _ in entries})
        return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}, offset

    def prompt_logprobs(self, ctx: Sequence[int], n_prompt: int, k: int) -> list[dict[str, Any] | None]:
        """vLLM's ``prompt_logprobs`` list (non-stream completions with echo and logprobs)."""
        out: list[dict[str, Any] | None] = [None]
        for pos in range(1, n_prompt):
            out.append({str(t): {"decoded_token": self.texts[t], "logprob": lp, "rank": rank}
                        for t, lp, rank in self.top(ctx, pos, k, prompt=True)})
        return out

    def chat(self, ctx: Sequence[int], start: int, end: int, k: int) -> dict[str, Any]:
        """The chat ``logprobs`` object of the generated tokens ``ctx[start:end]``."""
        content = []
        for pos in range(start, end):
            entries = self.top(ctx, pos, max(k, 1))
            token, lp, _ = entries[0]
            content.append({"token": self.texts[token], "logprob": lp, "bytes": self._bytes(token),
                            "top_logprobs": [{"token": self.texts[t], "logprob": v, "bytes": self._bytes(t)}
                                             for t, v, _ in entries[:k]]})
        return {"content": content}

    def _bytes(self, token: int) -> list[int]:
        return list(self.texts[token].encode("utf-8"))
