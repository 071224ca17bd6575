"""One client request in flight: what has been tried, what has been sent, and the helpers
that every phase (first token, relay, resume) shares."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import Config, ModelCfg
from gateway.errors import sse_error_event
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
    request: web.Request
    req: ParsedRequest
    cfg: Config
    mcfg: ModelCfg
    deadline: float  # event-loop time by which everything must be over
    tried: list[Tried] = field(default_factory=list)
    response: web.StreamResponse | None = None  # set once the head is sent (stream)
    served_by: Candidate | None = None
    served_model: str | None = None
    # every model whose text reached the client, the first one first (a continuation on a
    # fallback model adds its own; gateway.forward.continuation)
    served_models: list[str] = field(default_factory=list)
    retry_after_s: float | None = None
    assembled: bool = False  # a non-stream request served from an upstream stream (req is the stream)
    status: str | None = None  # the final status as counted ("200", "503", "stream_error", ...)
    ttft_s: float | None = None  # the answering attempt's time to first token
    usage: dict | None = None
    resumes: int = 0  # times the stream was continued on another endpoint after its first token
    # the deadlines of the model being tried (gateway.deadlines.candidate_deadlines), per candidate
    deadlines: Callable[[Candidate], Deadlines] | None = None

    @property
    def client_stream(self) -> bool:
        return self.req.stream and not self.assembled

    @property
    def attempts(self) -> int:
        return len(self.tried) + (1 if self.served_by is not None else 0)

    def time_left(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

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

    async def commit_head(self, cand: Candidate | None, model: str | None, upstream_headers: dict[str, str],
                          attempts: int | None = None) -> web.StreamResponse:
        """Send the stream's response head (once).  Sent by a keep-alive before any token, it
        cannot name the region that will answer: an SSE comment does, later."""
        if self.response is None:
            headers = CIMultiDict(upstream_headers)  # vLLM says content-type, others Content-Type
            headers.setdefault("Content-Type", "text/event-stream; charset=utf-8")
            headers.update(self.headers(cand, model, attempts))
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.response = web.StreamResponse(status=200, headers=headers)
            await self.response.prepare(self.request)
        return self.response


    async def end_with_error(self, message: str, type_: str, code: str | None) -> web.StreamResponse:
        """End a stream whose head is already out: the in-band error event, no [DONE]."""
        assert self.response is not None
        with contextlib.suppress(ConnectionResetError):  # the client left: nothing to tell it
            await self.response.write(sse_error_event(message, type_, code))
            await self.response.write_eof()
        return self.response
