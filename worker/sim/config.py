"""The simulator's configuration: one frozen, validated value."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How one simulated vLLM server behaves.

    Times are in milliseconds. ``model_seed`` plays the part of the weights: two simulators
    with the same ``model_seed`` produce the same tokens at temperature 0 whatever their
    ``seed`` (which only drives randomness: unseeded sampling and probabilistic faults).
    """

    model: str = "tiny-chat"
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    rtt_ms: float = 0.0
    max_num_seqs: int = 256
    tokens_per_chunk: int = 1
    seed: int = 0
    max_model_len: int = 2048
    default_max_tokens: int = 16
    fault: str | None = None
    model_seed: int = 0
    kv_cache_tokens: int = 262_144
    block_size: int = 16
    version: str = "0.32.0"

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "itl_ms", "rtt_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_num_seqs", "tokens_per_chunk", "max_model_len", "default_max_tokens",
                     "kv_cache_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.model:
            raise ValueError("model must be a non-empty name")
