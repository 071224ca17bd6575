"""Length distributions for prompts and outputs, parsed from short specs.

Spec forms (all values in tokens, samples are rounded and clamped to ``[1, 1_000_000]``):

* ``64`` — a constant;
* ``uniform:LO:HI`` — integers uniformly in ``[LO, HI]``;
* ``normal:MEAN:SD`` — a normal distribution;
* ``lognormal:MEDIAN:SIGMA`` — a log-normal with the given median and log-space sigma
  (long right tail, the shape of real chat traffic);
* ``choice:A,B,C`` — one of the listed values, equally likely.

Sampling takes the caller's ``random.Random`` so a seed reproduces a run.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

MIN_TOKENS = 1
MAX_TOKENS = 1_000_000


class DistError(ValueError):
    """A distribution spec that cannot be parsed; the message names the spec and why."""


@dataclass(frozen=True)
class Dist:
    kind: str
    params: tuple[float, ...]
    spec: str

    def sample(self, rng: random.Random) -> int:
        kind, p = self.kind, self.params
        if kind == "const":
            value = p[0]
        elif kind == "uniform":
            value = rng.randint(int(p[0]), int(p[1]))
        elif kind == "normal":
            value = rng.gauss(p[0], p[1])
        elif kind == "lognormal":
            value = p[0] * math.exp(rng.gauss(0.0, p[1]))
        else:  # choice
            value = p[rng.randrange(len(p))]
        return min(MAX_TOKENS, max(MIN_TOKENS, round(value)))

    def mean(self) -> float:
        """Expected value before clamping (used to size reports and prompts)."""
        kind, p = self.kind, self.params
        if kind == "uniform":
            return (p[0] + p[1]) / 2
        if kind == "lognormal":
            return p[0] * math.exp(p[1] ** 2 / 2)
        if kind == "choice":
            return sum(p) / len(p)
        return p[0]

    def upper(self) -> int:
        """A value few samples exceed (the 99.9th percentile for unbounded shapes)."""
        kind, p = self.kind, self.params
        if kind == "normal":
            value = p[0] + 3.1 * p[1]
        elif kind == "lognormal":
            value = p[0] * math.exp(3.1 * p[1])
        else:
            value = max(p)
        return min(MAX_TOKENS, max(MIN_TOKENS, math.ceil(value)))


_ARITY = {"uniform": 2, "normal": 2, "lognormal": 2}


def parse_dist(spec: str) -> Dist:
    """Parse a spec such as ``uniform:16:128``; raise :class:`DistError` naming the spec."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    try:
        if not rest:
            return _checked(Dist("const", (float(kind),), text))
        if kind == "choice":
            return _checked(Dist("choice", tuple(float(v) for v in rest.split(",")), text))
        params = tuple(float(v) for v in rest.split(":"))
    except ValueError:
        raise DistError(f"{spec!r}: expected numbers, e.g. 64, uniform:16:128, normal:100:20") from None
    if kind not in _ARITY:
        raise DistError(f"{spec!r}: unknown distribution {kind!r} (constant, uniform, normal, lognormal, choice)")
    if len(params) != _ARITY[kind]:
        raise DistError(f"{spec!r}: {kind} takes {_ARITY[kind]} parameters")
    return _checked(Dist(kind, params, text))


def _checked(dist: Dist) -> Dist:
    p = dist.params
    if not p or any(math.isnan(v) or math.isinf(v) for v in p):
        raise DistError(f"{dist.spec!r}: parameters must be finite numbers")
    if dist.kind in ("const", "choice") and min(p) < MIN_TOKENS:
        raise DistError(f"{dist.spec!r}: values must be >= {MIN_TOKENS}")
    if dist.kind == "uniform" and not MIN_TOKENS <= p[0] <= p[1]:
        raise DistError(f"{dist.spec!r}: need 1 <= LO <= HI")
    if dist.kind in ("normal", "lognormal") and (p[0] <= 0 or p[1] < 0):
        raise DistError(f"{dist.spec!r}: need a positive centre and a non-negative spread")
    return dist
