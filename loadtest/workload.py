"""Deterministic request generation: for a seed, request ``i`` always gets the same client
location, prompt length and output length (draws are made in index order)."""
from __future__ import annotations

import random

from .clients import parse_clients
from .config import LoadConfig
from .dists import parse_dist
from .protocol import make_body

_WORDS = ("time person year way day thing man world life hand part child eye woman place work week "
          "case point number group problem fact water room mother area money story month lot right "
          "study book job word business issue side kind head house service friend father power hour "
          "game line end member law car city name team minute idea kid body back parent face others "
          "level office door health art war history party result change morning reason research").split()


class PromptText:
    """A long random word text sliced per request: a prompt costs one C-level copy, not a join."""

    def __init__(self, rng: random.Random, words: int) -> None:
        self._rng = rng
        self._build(words)

    def _build(self, words: int) -> None:
        picked = [_WORDS[self._rng.randrange(len(_WORDS))] for _ in range(words)]
        self._starts = [0]
        for w in picked:
            self._starts.append(self._starts[-1] + len(w) + 1)
        self._text = " ".join(picked) + " "

    def take(self, n_words: int, rng: random.Random) -> str:
        if n_words >= len(self._starts):
            self._build(2 * n_words)
        first = rng.randrange(len(self._starts) - n_words)
        return self._text[self._starts[first]:self._starts[first + n_words] - 1]


class RequestFactory:
    def __init__(self, config: LoadConfig, model: str) -> None:
        self.cfg = config
        self.model = model
        self.arrival_rng = random.Random(f"{config.seed}:arrivals")
        self._rng = random.Random(f"{config.seed}:requests")
        self.clients = parse_clients(config.clients)
        self.prompt_dist = parse_dist(config.prompt_tokens)
        self.output_dist = parse_dist(config.max_tokens)
        self._text = PromptText(random.Random(f"{config.seed}:text"), max(4096, 2 * self.prompt_dist.upper()))
        self._extra = {"ignore_eos": True} if config.ignore_eos else None

    def base_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        headers.update(dict(self.cfg.headers))
        return headers

    def make(self, index: int) -> tuple[str, str, bytes]:
        """Return ``(client city key, client IP, request body)`` for the next request."""
        rng = self._rng
        city, ip = self.clients.pick(rng)
        n_prompt = self.prompt_dist.sample(rng)
        prompt = f"{index}-{rng.getrandbits(32):08x} " + self._text.take(max(0, n_prompt - 1), rng)
        body = make_body(self.cfg.endpoint, self.model, prompt, self.output_dist.sample(rng),
                         self.cfg.stream, self._extra)
        return city.key, ip, body
