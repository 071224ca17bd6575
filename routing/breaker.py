"""A circuit breaker per endpoint: closed -> open -> half-open -> closed.

* CLOSED: requests flow.  ``failures`` consecutive failures (``Outcome.is_failure``) open it.
* OPEN: no requests for the open period: ``open_s`` the first time, doubled on each re-open
  from half-open, capped at ``max_open_s``; back to ``open_s`` once a success closes it.
  Outcomes arriving while open (requests admitted before it opened) are ignored.
* HALF_OPEN (entered lazily, when the clock passes the open period): at most
  ``half_open_probes`` trial requests in flight at once.  A success closes the breaker, a
  failure opens it again (for twice as long).

Trial slots follow ``acquire``/``release`` around every attempt.  The breaker cannot tell a
trial from a request that was admitted before it opened and is still running (a long
stream), so it errs on the safe side: requests in flight when it turned half-open are
counted as finishing first, and never free a trial slot they did not take.

Client errors and cancellations say nothing about the endpoint: they neither count as
failures nor break a streak, and a trial ending that way only frees its slot (``release``).
Transitions go to ``on_transition(endpoint_id, "breaker", old, new)``.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from routing.health import TransitionCallback
from routing.outcome import Outcome

Clock = Callable[[], float]
_NEUTRAL = (Outcome.CLIENT_ERROR, Outcome.CANCELLED)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerParams:
    enabled: bool = True
    failures: int = 5  # consecutive failures that open the breaker
    open_s: float = 5.0  # first open period
    max_open_s: float = 60.0
    half_open_probes: int = 1  # concurrent trial requests when half-open

    def __post_init__(self) -> None:
        if self.failures < 1 or self.half_open_probes < 1:
            raise ValueError("failures and half_open_probes must be >= 1")
        if not 0 < self.open_s <= self.max_open_s:
            raise ValueError("need 0 < open_s <= max_open_s")


class CircuitBreaker:
    __slots__ = ("endpoint_id", "params", "_clock", "_on_transition", "_state", "closed", "_streak",
                 "_open_for", "open_until", "_inflight", "_stale")

    def __init__(self, endpoint_id: str, params: BreakerParams, clock: Clock,
                 on_transition: TransitionCallback | None = None) -> None:
        self.endpoint_id = endpoint_id
        self.params = params
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self.closed = True  # read on the planner's hot path: no call, no clock read
        self._streak = 0  # consecutive failures while closed
        self._open_for = params.open_s  # length of the current (or next) open period
        self.open_until: float | None = None
        self._inflight = 0  # attempts between acquire and release
        self._stale = 0  # of those, admitted before the breaker turned half-open

    @property
    def state(self) -> BreakerState:
        """The current state; an open period that has run out turns half-open here."""
        return self._refresh()

    def _refresh(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.open_until is not None and self._clock() >= self.open_until:
            self._stale = self._inflight
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def trials(self) -> int:
        """Trial requests in flight (0 unless half-open)."""
        return self._inflight - self._stale if self.state is BreakerState.HALF_OPEN else 0

    def reason(self) -> str | None:
        """Why no request may go now: "breaker_open", "breaker_half_open" (every trial slot
        taken) or None (closed, or half-open with a free slot)."""
        if self.closed:
            return None
        state = self._refresh()
        if state is BreakerState.OPEN:
            return "breaker_open"
        return None if self._inflight - self._stale < self.params.half_open_probes else "breaker_half_open"

    def acquire(self) -> None:
        """An attempt starts (when half-open, it takes a trial slot)."""
        self._refresh()
        self._inflight += 1

    def release(self) -> None:
        """An attempt ended, whatever its outcome."""
        if self._inflight > 0:
            self._inflight -= 1
        if self._stale > 0:
            self._stale -= 1

    def record(self, outcome: Outcome) -> None:
        if outcome in _NEUTRAL or not self.params.enabled:
            return
        state = self._refresh()
        failed = outcome.is_failure
        if state is BreakerState.CLOSED:
            self._streak = self._streak + 1 if failed else 0
            if self._streak >= self.params.failures:
                self._open(self.params.open_s)
        elif state is BreakerState.HALF_OPEN:
            if failed:
                self._open(min(self.params.max_open_s, self._open_for * 2.0))
            else:
                self._streak = 0
                self._open_for = self.params.open_s
                self.open_until = None
                self._set(BreakerState.CLOSED)

    def _open(self, duration: float) -> None:
        self._streak = 0
        self._open_for = duration
        self.open_until = self._clock() + duration
        self._stale = 0
        self._set(BreakerState.OPEN)

    def _set(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self.closed = new is BreakerState.CLOSED
        if self._on_transition is not None and old is not new:
            self._on_transition(self.endpoint_id, "breaker", old.value, new.value)
