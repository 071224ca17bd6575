"""Active health of one endpoint, driven by probe results, with rise/fall thresholds.

An endpoint starts UNKNOWN and is served as if healthy, so a gateway can take traffic at
once; the first probe decides (a single failure from UNKNOWN marks it unhealthy, a single
success healthy).  After that it takes ``fall`` consecutive failures to go UNHEALTHY and
``rise`` consecutive successes to come back.  Transitions go to ``on_transition``.
"""
from __future__ import annotations

import enum
from collections.abc import Callable

TransitionCallback = Callable[[str, str, str, str], None]  # (endpoint_id, kind, old, new)


class HealthState(enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class HealthCheck:
    __slots__ = ("endpoint_id", "rise", "fall", "state", "_streak", "_on_transition")

    def __init__(self, endpoint_id: str, rise: int, fall: int,
                 on_transition: TransitionCallback | None = None) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.endpoint_id = endpoint_id
        self.rise = rise
        self.fall = fall
        self.state = HealthState.UNKNOWN
        self._streak = 0  # > 0: consecutive successes, < 0: consecutive failures
        self._on_transition = on_transition

    @property
    def healthy(self) -> bool:
        return self.state is not HealthState.UNHEALTHY

    def record(self, ok: bool) -> HealthState:
        """Feed one probe result; returns the (possibly new) state."""
        if ok:
            self._streak = self._streak + 1 if self._streak > 0 else 1
        else:
            self._streak = self._streak - 1 if self._streak < 0 else -1
        state = self.state
        if state is HealthState.UNKNOWN:
            self._set(HealthState.HEALTHY if ok else HealthState.UNHEALTHY)
        elif state is HealthState.HEALTHY and -self._streak >= self.fall:
            self._set(HealthState.UNHEALTHY)
        elif state is HealthState.UNHEALTHY and self._streak >= self.rise:
            self._set(HealthState.HEALTHY)
        return self.state

    def _set(self, new: HealthState) -> None:
        old, self.state = self.state, new
        if self._on_transition is not None and old is not new:
            self._on_transition(self.endpoint_id, "health", old.value, new.value)
