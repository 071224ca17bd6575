"""The ledger: one call records an attempt in every book (the request's list, the endpoint's
observations, the attempts metric, the retry budget, throttles)."""
from __future__ import annotations

from gateway.forward.ledger import BUDGET_DETAIL, STALE_DETAIL
from gateway.forward.upstream import Failed
from gateway.metrics import build_metrics
from routing.budget import RetryBudget
from routing.outcome import Outcome
from tests.gateway.forward import fakes
from tests.routing.helpers import FakeClock


def books(budget: RetryBudget | None = None):
    """A ledger on real observations and metrics (fake clock), a fresh exchange, three candidates."""
    clock, topo, metrics = FakeClock(), fakes.topology(), build_metrics()
    obs = fakes.observations(topo, clock)
    return fakes.ledger(obs, clock, metrics, budget), obs, metrics, fakes.exchange(), fakes.candidates(topo)


def attempts_metric(metrics, cand, outcome: Outcome) -> float:
    value = metrics.registry.get_sample_value("infercdn_upstream_attempts_total", {
        "pool": cand.pool.name, "endpoint": cand.endpoint.id, "outcome": outcome.value})
    return value or 0.0


async def test_a_failed_attempt_is_tried_observed_and_counted() -> None:
    ledger, obs, metrics, ex, cands = books()
    cand = cands[0]
    ledger.failed(ex, cand, Failed(Outcome.HTTP_5XX, "upstream returned 502", 502), "m")
    assert [(t.cand, t.outcome, t.detail, t.model) for t in ex.tried] == [
        (cand, Outcome.HTTP_5XX, "upstream returned 502", "m")]
    assert obs.view(cand.endpoint.id).consecutive_failures == 1
    assert attempts_metric(metrics, cand, Outcome.HTTP_5XX) == 1.0


async def test_a_stalled_loop_is_listed_but_not_blamed_on_the_endpoint() -> None:
    ledger, obs, metrics, ex, cands = books()
    cand = cands[0]
    ledger.failed(ex, cand, Failed(Outcome.TIMEOUT, "no first token", local_stall=True), "m")
    assert [t.outcome for t in ex.tried] == [Outcome.TIMEOUT]
    assert obs.view(cand.endpoint.id).consecutive_failures == 0
    assert attempts_metric(metrics, cand, Outcome.CANCELLED) == 1.0
    assert attempts_metric(metrics, cand, Outcome.TIMEOUT) == 0.0


async def test_a_429_throttles_the_model_on_that_endpoint_and_keeps_the_shortest_wait() -> None:
    ledger, obs, _, ex, cands = books()
    first, second = cands[:2]
    ledger.failed(ex, first, Failed(Outcome.HTTP_429, "upstream throttled (429)", 429, retry_after="7"), "m")
    ledger.failed(ex, second, Failed(Outcome.HTTP_429, "upstream throttled (429)", 429, retry_after="3"), "m")
    assert ex.retry_after_s == 3.0
    assert obs.model_throttled(first.endpoint.id, first.upstream_model)


async def test_a_retry_spends_the_budget_and_an_empty_budget_lists_the_candidate() -> None:
    ledger, _, _, ex, cands = books(RetryBudget(0.0, 1.0, 10.0, FakeClock()))  # a few retries, whatever the traffic
    first, second = cands[:2]
    assert ledger.spend_retry(ex, first) and ex.tried == []
    spent = 0
    while ledger.spend_retry(ex, second) and spent < 100:  # bounded: the budget holds a few at most
        spent += 1
    assert spent < 100
    assert [(t.cand, t.outcome, t.detail) for t in ex.tried] == [(second, Outcome.CANCELLED, BUDGET_DETAIL)]


async def test_stale_retries_and_notes_reach_the_list_only() -> None:
    ledger, obs, metrics, ex, cands = books()
    cand = cands[0]
    ledger.stale(ex, cand, 2, "m")
    assert [(t.outcome, t.detail) for t in ex.tried] == [(Outcome.RESET, STALE_DETAIL)] * 2
    assert attempts_metric(metrics, cand, Outcome.RESET) == 0.0
    assert ex.attempts == 2


async def test_the_request_status_is_a_stream_error_once_committed() -> None:
    ledger, _, _, ex, _ = books()
    ledger.count(ex, "eu-west", "503", committed=True)
    assert ex.status == "stream_error"
    ledger.count(ex, "eu-west", "503", committed=False)
    assert ex.status == "503"
