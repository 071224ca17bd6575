"""The deadlines of one attempt, from the config and what this gateway has observed.

The seam for the forward path: ``candidate_deadlines(cfg, model, observations)`` once per model
of a request, then the returned function once per candidate it tries::

    deadlines = candidate_deadlines(ex.cfg, model, self.obs)
    d = deadlines(cand)   # d.ttft_s: first-token deadline, d.stall_s: stall timeout

The plan explanation (``/admin/plan``, ``infercdn route``) shows the same numbers."""
from __future__ import annotations

from collections.abc import Callable

from gateway.config import Config
from routing.deadlines import Deadlines, TimingSource, effective_deadlines
from routing.plan import Candidate


def candidate_deadlines(cfg: Config, model: str, timings: TimingSource) -> Callable[[Candidate], Deadlines]:
    """For each candidate of ``model``: the model's deadline settings (``auto`` from the pool's
    observed times, or fixed), a pool's own ``ttft_deadline_s`` first."""
    settings, pool_ttft = cfg.deadline_inputs(model)

    def for_candidate(cand: Candidate) -> Deadlines:
        name = cand.pool.name
        return effective_deadlines(settings, timings.pool_timings(name), pool_ttft.get(name))

    return for_candidate
