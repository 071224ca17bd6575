"""Fault injection: the spec grammar and the run-time state that decides which requests a fault hits.

Grammar: ``KIND[:ARG[,ARG...]]`` where ``ARG`` is ``name=number`` or a bare number that sets the
kind's main parameter (``cut_after:5`` = ``cut_after:tokens=5``). Every kind also takes
``prob=P`` (hit each request with probability P, drawn from an rng seeded by the simulator's
``seed``), ``times=N`` (hit only the next N requests, then behave) and ``health=0|1``.

Faults hit the generation endpoints (``/v1/chat/completions``, ``/v1/completions``,
``/v1/responses``); ``cut_after``/``stall_after``/``malformed_event`` count the tokens of all the
choices of a multi-choice answer together (``n > 1``, lists of prompts). The kinds in
:data:`HEALTH_KINDS` (503, flap, hang, reset_before_headers) also hit ``/health`` and ``/ping`` —
unless the fault has ``prob`` or ``times`` (a per-request fault) or ``health=0``; ``health=1``
forces it (then ``/health`` follows whether the fault is still active, without drawing).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# kind -> (main parameter or None, required parameters, optional parameters)
KINDS: dict[str, tuple[str | None, frozenset[str], frozenset[str]]] = {
    "429": ("retry_after", frozenset(), frozenset({"retry_after"})),
    "500": (None, frozenset(), frozenset()),
    "500_once": (None, frozenset(), frozenset()),
    "503": ("retry_after", frozenset(), frozenset({"retry_after"})),
    "reset_before_headers": (None, frozenset(), frozenset()),
    "hang": (None, frozenset(), frozenset()),
    "slow_first_token": ("seconds", frozenset({"seconds"}), frozenset()),
    "cut_after": ("tokens", frozenset({"tokens"}), frozenset()),
    "stall_after": ("tokens", frozenset({"tokens"}), frozenset()),
    "malformed_event": ("at", frozenset(), frozenset({"at"})),
    "no_done": (None, frozenset(), frozenset()),
    "context_length": (None, frozenset(), frozenset({"openai"})),
    "content_policy": (None, frozenset(), frozenset()),
    "flap": ("down_s", frozenset({"down_s"}), frozenset({"up_s"})),
    "reject_continuation": (None, frozenset(), frozenset()),
}
COMMON = frozenset({"prob", "times", "health"})
HEALTH_KINDS = frozenset({"503", "flap", "hang", "reset_before_headers"})
# outcomes that make the request fail (counted in requests_failed)
FAILING_KINDS = frozenset(KINDS) - {"slow_first_token", "malformed_event", "no_done"}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str
    params: Mapping[str, float] = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Parse ``KIND[:ARG[,ARG...]]``; raise ValueError naming what is wrong."""
        kind, _, rest = text.strip().partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
        main, required, optional = KINDS[kind]
        params: dict[str, float] = {}
        for arg in filter(None, (a.strip() for a in rest.split(","))):
            name, eq, value = arg.partition("=")
            if not eq:
                if main is None:
                    raise ValueError(f"fault {kind!r} takes no positional argument (got {arg!r})")
                name, value = main, arg
            name = name.strip()
            if name not in required | optional | COMMON:
                raise ValueError(f"fault {kind!r} has no parameter {name!r}")
            params[name] = _number(kind, name, value)
        if kind == "500_once":
            params.setdefault("times", 1)
        missing = required - params.keys()
        if missing:
            raise ValueError(f"fault {kind!r} needs {', '.join(sorted(missing))}=N")
        _check(kind, params)
        return cls(kind, params, text.strip())

    def get(self, name: str, default: float | None = None) -> float | None:
        return self.params.get(name, default)


def _number(kind: str, name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"fault {kind!r}: {name}={value!r} is not a number") from None


def _check(kind: str, params: Mapping[str, float]) -> None:
    if not 0.0 <= params.get("prob", 1.0) <= 1.0:
        raise ValueError(f"fault {kind!r}: prob must be within [0, 1]")
    for name, value in params.items():
        if value < 0:
            raise ValueError(f"fault {kind!r}: {name} must be >= 0")


class ActiveFault:
    """A fault in force: counts down ``times``, draws ``prob``, times the flap window."""

    def __init__(self, spec: FaultSpec, now: float, rng: random.Random) -> None:
        self.spec = spec
        self.started = now
        times = spec.get("times")
        self.remaining: int | None = None if times is None else int(times)
        self.rng = rng

    def flap_down(self, now: float) -> bool:
        down = self.spec.params["down_s"]
        up = self.spec.get("up_s")
        elapsed = now - self.started
        if up is None:
            return elapsed < down
        return elapsed % (down + up) < down

    def active(self, now: float) -> bool:
        if self.remaining == 0:
            return False
        return self.spec.kind != "flap" or self.flap_down(now)

    def hit(self, now: float) -> bool:
        """Decide for one generation request (consumes ``times`` and one ``prob`` draw)."""
        if not self.active(now):
            return False
        prob = self.spec.get("prob")
        if prob is not None and self.rng.random() >= prob:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def hits_health(self, now: float) -> bool:
        if self.spec.kind not in HEALTH_KINDS:
            return False
        forced = self.spec.get("health")
        if forced is None:
            forced = 0.0 if {"prob", "times"} & self.spec.params.keys() else 1.0
        return bool(forced) and self.active(now)


class FaultController:
    """The simulator's current fault, replaceable at run time."""

    def __init__(self, clock: Callable[[], float], seed: int) -> None:
        self.clock = clock
        self.seed = seed
        self.active: ActiveFault | None = None

    @property
    def spec(self) -> FaultSpec | None:
        return self.active.spec if self.active else None

    def set(self, spec: str | FaultSpec | None) -> FaultSpec | None:
        """Install a fault (a spec string, a parsed spec, or None/"" to clear)."""
        if isinstance(spec, str):
            spec = FaultSpec.parse(spec) if spec.strip() and spec.strip() != "none" else None
        self.active = None if spec is None else ActiveFault(spec, self.clock(), random.Random(self.seed))
        return spec

    def before_parse(self) -> FaultSpec | None:
        """The fault hitting a generation request (all kinds but reject_continuation)."""
        a = self.active
        if a is None or a.spec.kind == "reject_continuation" or not a.hit(self.clock()):
            return None
        return a.spec

    def after_parse(self, continuation: bool) -> FaultSpec | None:
        """reject_continuation, decided once the request is known to be a continuation."""
        a = self.active
        if a is None or a.spec.kind != "reject_continuation" or not continuation:
            return None
        return a.spec if a.hit(self.clock()) else None

    def for_health(self) -> FaultSpec | None:
        a = self.active
        return a.spec if a is not None and a.hits_health(self.clock()) else None
