"""Where a cut stream may continue, and how: the served model's other endpoints first, then the
fallback chain (issue 9).

When no endpoint of the model that was answering is left, the generation goes on on
``models.<m>.fallbacks``, in order, each bounded by the tenant's models as the first tokens were
(``gateway.forward.orchestrator``), each planned by the same router.  Across models a continuation is by text
only: token ids belong to one model's vocabulary.  A pool that takes an assistant prefill
(``pools[].prefill``, default true, and ``can_continue``) is asked to continue the text so far
(chat: an open assistant message with ``continue_final_message``; completions: prompt + text);
one that does not is asked the original request, and its output is skipped until it has
reproduced what the client has, which only a deterministic request (temperature 0 or a seed)
can do.  A sampled request whose only targets refuse a prefill cannot be continued: the stream
ends with the in-band error that names the cut.  Text that does not stand for the tokens it came
from (U+FFFD: bytes the first model's detokenizer could not render) is regenerated, not
prefilled, where the request is deterministic."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.request import ParsedRequest
from gateway.forward.resume import Continuation, StreamState, deterministic, plan_continuation
from routing.plan import Candidate, Plan, RequestContext

UNRENDERED = "\ufffd"  # what a detokenizer writes for bytes that are not (yet) valid UTF-8


@dataclass(frozen=True, slots=True)
class Target:
    """A candidate for the next continuation and the public model it answers as."""

    cand: Candidate
    model: str


class Planning(Protocol):
    """What plans a request (routing.planner.Planner)."""

    def plan(self, ctx: RequestContext) -> Plan: ...


class ModelChain:
    """The candidates a cut stream may continue on, in order: the served model's plan, then each
    later fallback model's plan (planned when first needed).  Endpoints already tried are passed
    over (``tried``), as are targets the request cannot be continued on (:meth:`skip`)."""

    def __init__(self, served: str, plan: Plan, later: Sequence[str] = (), planner: Planning | None = None,
                 ctx: RequestContext | None = None) -> None:
        self.planner = planner
        self.ctx = ctx
        self.plans: list[tuple[str, Plan | None]] = [(served, plan), *((m, None) for m in later)]
        self.skipped: set[tuple[str, str]] = set()

    def next(self, tried: set[str]) -> Target | None:
        for i, (model, plan) in enumerate(self.plans):
            if plan is None:
                if self.planner is None or self.ctx is None:
                    continue
                plan = self.planner.plan(replace(self.ctx, model=model))
                self.plans[i] = (model, plan)
            for cand in plan.candidates:
                eid = cand.endpoint.id
                if eid not in tried and (eid, model) not in self.skipped and model in cand.pool.models:
                    return Target(cand, model)
        return None

    def skip(self, target: Target) -> None:
        self.skipped.add((target.cand.endpoint.id, target.model))


def later_fallbacks(fallbacks: Sequence[str], served: str) -> tuple[str, ...]:
    """The fallbacks after ``served`` in the chain (all of them when the requested model served)."""
    return tuple(fallbacks[fallbacks.index(served) + 1:]) if served in fallbacks else tuple(fallbacks)


def continuation_for(req: ParsedRequest, st: StreamState, target: Target, models: Sequence[str],
                     want: str) -> Continuation | None:
    """The continuation to ask ``target`` for.  ``models``: every model that has contributed to
    the stream so far (the first one first).  On the model that answered alone, the configured
    strategy (``models.<m>.resume``); as soon as another model is involved, text or a
    regeneration only, the prefill only where the pool takes one."""
    pool = target.cand.pool
    if tuple(models) == (target.model,):
        return plan_continuation(req, st, target.cand.upstream_model, pool.can_continue, want)
    # text with U+FFFD holds bytes the first model's detokenizer could not render: sent back as a
    # prefill it is other text (other tokens), so only a regeneration can reproduce it exactly
    prefill = pool.can_continue and pool.prefill and not (UNRENDERED in st.text and deterministic(req.body))
    return plan_continuation(req, st, target.cand.upstream_model, prefill, "off" if want == "off" else "text")


def with_models(models: Sequence[str], model: str) -> list[str]:
    """``models`` with ``model`` added at the end unless it is already there."""
    return [*models, model] if model not in models else list(models)
