"""The one place an attempt is recorded.

An attempt's end reaches four books at once: the request's list of what was tried
(``Exchange.tried``: the ``x-infercdn-attempts`` header, the access log's ``tried``), the
endpoint's observations (outlier detection, the breaker, latency), the attempts metric, and
for a retry the retry budget.  The request's own books (its final status, duration and token
counts) are kept here too, so that nothing else in the forwarding path records anything."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.forward.exchange import Exchange, Tried
from gateway.forward.upstream import Failed, Ready
from gateway.metrics import GatewayMetrics
from routing.budget import RetryBudget
from routing.deadlines import GapMeter
from routing.observations import Observations
from routing.outcome import Outcome
from routing.plan import Candidate
from routing.retry import parse_retry_after

STALE_DETAIL = "a reused connection the upstream had closed; sent again at once on a fresh one"
BUDGET_DETAIL = "retry budget exhausted"


class Ledger:
    """Built once per gateway; ``clock``/``wall``: the runtime's monotonic and Unix clocks."""

    def __init__(self, obs: Observations, metrics: GatewayMetrics, budget: RetryBudget,
                 clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.obs = obs
        self.metrics = metrics
        self.budget = budget
        self.clock = clock
        self.wall = wall

    # -- attempts

    def attempt(self, ex: Exchange, cand: Candidate, outcome: Outcome, detail: str, model: str) -> None:
        """An attempt that ended without serving the client: tried, observed, counted."""
        self.note(ex, cand, outcome, detail, model)
        self.record(cand, outcome)

    def failed(self, ex: Exchange, cand: Candidate, failed: Failed, model: str) -> None:
        """An attempt that got no usable first token.  A deadline the gateway's own stalled loop
        fired late says nothing about the endpoint: it never feeds outlier detection or the
        breaker (issue 10, defect 5), though the request's list says what happened."""
        self.note(ex, cand, failed.outcome, failed.detail, model)
        self.record(cand, Outcome.CANCELLED if failed.local_stall else failed.outcome)
        if failed.outcome is Outcome.HTTP_429:
            delay = parse_retry_after(failed.retry_after, self.wall())
            if delay is not None:
                ex.retry_after_s = delay if ex.retry_after_s is None else min(ex.retry_after_s, delay)
                # only the model that answered 429: the endpoint's other models keep their traffic
                self.obs.throttle_model(cand.endpoint.id, cand.upstream_model,
                                        min(delay, ex.cfg.retry.max_retry_after_s))

    def note(self, ex: Exchange, cand: Candidate, outcome: Outcome, detail: str, model: str) -> None:
        """The request's list only (the endpoint's books were written when the attempt ended)."""
        ex.tried.append(Tried(cand, outcome, detail, model))

    def record(self, cand: Candidate, outcome: Outcome, ttfb_ms: float | None = None) -> None:
        """The endpoint's books only: observations and the attempts metric."""
        self.obs.record_outcome(cand.endpoint.id, outcome, ttfb_ms)
        self.metrics.of(self.metrics.attempts, cand.pool.name, cand.endpoint.id, outcome.value).inc()

    def stale(self, ex: Exchange, cand: Candidate, stale: int, model: str) -> None:
        """An attempt's transparent retries (a reused connection the upstream had closed, sent
        again at once on a fresh one): each is an attempt the client and the access log see."""
        for _ in range(stale):
            self.note(ex, cand, Outcome.RESET, STALE_DETAIL, model)

    def spend_retry(self, ex: Exchange, cand: Candidate) -> bool:
        """A retry on ``cand`` may go ahead (the retry budget had room); when not, the
        candidate is listed as not tried for that reason."""
        if self.budget.try_spend():
            return True
        self.note(ex, cand, Outcome.CANCELLED, BUDGET_DETAIL, ex.req.model)
        return False

    def first_token(self, ex: Exchange, cand: Candidate, ready: Ready) -> None:
        """The answering attempt's first token (or whole body) reached the gateway."""
        self.metrics.of(self.metrics.ttft_seconds, cand.region).observe(ready.ttfb_s)
        ex.ttft_s = ready.ttfb_s
        if ex.tried:
            self.metrics.of(self.metrics.failovers, ex.tried[0].cand.region, cand.region).inc()

    def stream_gaps(self, cand: Candidate, meter: GapMeter) -> None:
        self.obs.record_stream_gaps(cand.endpoint.id, meter.max_ms, meter.gaps)

    def resumed(self, strategy: str, ok: bool) -> None:
        self.metrics.of(self.metrics.resumes, strategy, "ok" if ok else "failed").inc()

    # -- the request

    def request(self) -> None:
        """A request starts (the retry budget's denominator)."""
        self.budget.record_request()

    def count(self, ex: Exchange, region: str, status: str, committed: bool) -> None:
        """The request's final status; ``committed``: the client already has a 200 head, so what
        it sees of any other status is the in-band error."""
        if committed and status != "200":
            status = "stream_error"
        ex.status = status
        req = ex.req
        self.metrics.of(self.metrics.requests, req.model, region, status).inc()
        self.metrics.of(self.metrics.request_seconds, req.model, "true" if ex.client_stream else "false").observe(
            self.clock() - req.started)

    def usage(self, ex: Exchange, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        # only counts are kept (and logged): a pool's usage block is not trusted to be small
        ex.usage = usage = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
        for theirs, ours in (("input_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens")):
            if theirs in usage and ours not in usage:  # the Responses API's names
                usage[ours] = usage[theirs]
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value > 0:
                self.metrics.of(self.metrics.tokens, ex.served_model or ex.req.model,
                                kind.removesuffix("_tokens")).inc(value)
