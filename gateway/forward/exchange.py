"""One client request in flight: what has been tried, where it was served, what it cost.

Per-request state only, no behaviour that touches the client: the client's HTTP request and
response belong to the client stream (``gateway.forward.client_http``).  The access log, the
traffic page and token quotas read a finished exchange."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config
from gateway.config_models import ModelCfg
from gateway.request import ParsedRequest
from routing.deadlines import Deadlines
from routing.outcome import Outcome
from routing.plan import Candidate


@dataclass(slots=True)
class Tried:
    cand: Candidate
    outcome: Outcome
    detail: str
    model: str


@dataclass(slots=True)
class Exchange:
    req: ParsedRequest
    cfg: Config
    mcfg: ModelCfg
    deadline: float  # event-loop time by which everything must be over
    tried: list[Tried] = field(default_factory=list)
    served_by: Candidate | None = None
    # every model whose text reached the client, the first one first (a continuation on a
    # fallback model adds its own; gateway.forward.continuation); the first is ``served_model``
    served_models: list[str] = field(default_factory=list)
    retry_after_s: float | None = None
    assembled: bool = False  # a non-stream request served from an upstream stream (req is the stream)
    status: str | None = None  # the final status as counted ("200", "503", "stream_error", ...)
    ttft_s: float | None = None  # the answering attempt's time to first token
    usage: dict[str, Any] | None = None
    resumes: int = 0  # times the stream was continued on another endpoint after its first token
    stream_events: int = 0  # events relayed (vLLM sends one token per event), for token budgets
    # the deadlines of the model being tried (gateway.deadlines.candidate_deadlines), per candidate
    deadlines: Callable[[Candidate], Deadlines] | None = None
    # the event loop's clock (``deadline`` is on it); None: the running loop's, looked up per call
    now: Callable[[], float] | None = None

    @property
    def served_model(self) -> str | None:
        """The model of the first token (None until one came)."""
        return self.served_models[0] if self.served_models else None

    @property
    def client_stream(self) -> bool:
        return self.req.stream and not self.assembled

    @property
    def attempts(self) -> int:
        return len(self.tried) + (1 if self.served_by is not None else 0)

    def time_left(self) -> float:
        now = self.now
        return self.deadline - (now() if now is not None else asyncio.get_running_loop().time())

    def endpoints_tried(self) -> set[str]:
        return {t.cand.endpoint.id for t in self.tried}

    def headers(self, cand: Candidate | None, model: str | None = None, attempts: int | None = None) -> dict[str, str]:
        out = {"x-request-id": self.req.request_id,
               "x-infercdn-attempts": str(self.attempts if attempts is None else attempts)}
        if cand is not None:
            out["x-infercdn-region"] = cand.region
            out["x-infercdn-pool"] = cand.pool.name
            out["x-infercdn-model"] = model or self.req.model
        return out

    def summary(self) -> str:
        return "; ".join(f"{t.cand.endpoint.id} ({t.cand.region}): {t.detail}" for t in self.tried)
