"""Config of the public models (``models:``): deadlines, resume, hedging, fallbacks; how an entry
inherits from ``"*"``; and the checks of fallback chains.

Inheritance: ``models.<m>`` starts from the ``"*"`` entry, field by field, nested sections
(``hedge``, ``ttft_auto``, ``stall_auto``) key by key; what ``<m>`` writes wins.  ``"*"``'s
``fallbacks`` go to every model except the fallback targets themselves (a target falling back to
itself, or to its sibling and back, would be a loop)."""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from gateway.config_fleet import _Model
from gateway.redact import MISSING
from routing.deadlines import AutoParams, DeadlineSettings

STAR = "*"
NO_VALUE = MISSING  # a problem with no value to show


class HedgeCfg(_Model):
    enabled: bool = False
    after_ms: float | Literal["p95"] = "p95"  # fixed threshold, or the pool's observed p95 time to first token
    min_after_ms: float = Field(default=50.0, ge=0)  # floor for the p95 threshold (and before enough samples)
    max_hedges: int = Field(default=1, ge=1, le=4)


class AutoDeadlineCfg(_Model):
    """An ``auto`` deadline: the pool's observed p99 × ``factor``, within [``floor_s``,
    ``ceiling_s``]; ``fallback_s`` while the pool has fewer than ``min_samples`` samples."""

    factor: float = Field(default=4.0, gt=0)
    floor_s: float = Field(default=2.0, gt=0)
    ceiling_s: float = Field(default=30.0, gt=0)
    min_samples: int = Field(default=20, ge=1)
    fallback_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> AutoDeadlineCfg:
        if self.floor_s > self.ceiling_s:
            raise ValueError(f"floor_s ({self.floor_s:g}) must not exceed ceiling_s ({self.ceiling_s:g})")
        return self

    def params(self) -> AutoParams:
        return AutoParams(self.factor, self.floor_s, self.ceiling_s, self.min_samples, self.fallback_s)


class TtftAutoCfg(AutoDeadlineCfg):
    """First token: the p99 of the pool's times to first token × 4, 2-30 s; 30 s before 50 samples."""

    min_samples: int = Field(default=50, ge=1)


class StallAutoCfg(AutoDeadlineCfg):
    """Stall: the p99 of recent streams' longest gap between chunks × 4, 2-30 s; 10 s before 20 streams."""

    fallback_s: float = Field(default=10.0, gt=0)


def _seconds_or_auto(v: Any) -> Any:
    if v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
        return v
    raise ValueError("must be auto or a number of seconds > 0")


class ModelCfg(_Model):
    """Per public model: deadlines, resume, hedging and fallbacks (all optional).

    ``ttft_deadline_s`` and ``stall_timeout_s`` are written in the file as ``auto`` (default) or
    seconds; the declared value is in ``ttft_deadline`` / ``stall_timeout``.  The properties
    ``ttft_deadline_s`` / ``stall_timeout_s`` give a number: the fixed value, or auto's
    ``fallback_s`` (what applies to a pool without samples).  Per candidate, ask
    ``gateway.deadlines.candidate_deadlines`` (which calls ``routing.deadlines``).

    ``resume_deadline_s``: no resume starts later than this after a stream's first cut;
    ``fallback_on`` (``content_policy``): content-policy refusals may go to the fallback models."""

    ttft_deadline: float | Literal["auto"] = Field(default="auto", alias="ttft_deadline_s")
    ttft_auto: TtftAutoCfg = TtftAutoCfg()
    stall_timeout: float | Literal["auto"] = Field(default="auto", alias="stall_timeout_s")
    stall_auto: StallAutoCfg = StallAutoCfg()
    total_deadline_s: float = Field(default=600.0, gt=0)
    resume: Literal["token_ids", "text", "off"] = "token_ids"
    resume_deadline_s: float = Field(default=60.0, gt=0)  # from a stream's first cut, for all its resumes
    # stream: a non-stream request is sent upstream as a stream (first-token deadline, stall
    # watchdog, resume) and its answer assembled; passthrough: the pool's JSON relayed as is
    non_stream: Literal["stream", "passthrough"] = "stream"
    hedge: HedgeCfg = HedgeCfg()
    fallbacks: tuple[str, ...] = ()
    fallback_on: tuple[Literal["content_policy"], ...] = ()  # refusals that may go to the fallbacks
    larger_context: tuple[str, ...] = ()  # pools to try when a pool answers context_length_exceeded

    _check_deadlines = field_validator("ttft_deadline", "stall_timeout", mode="before")(_seconds_or_auto)

    @property
    def ttft_deadline_s(self) -> float:
        return self.ttft_auto.fallback_s if self.ttft_deadline == "auto" else self.ttft_deadline

    @property
    def stall_timeout_s(self) -> float:
        return self.stall_auto.fallback_s if self.stall_timeout == "auto" else self.stall_timeout

    def deadline_settings(self) -> DeadlineSettings:
        return DeadlineSettings(self.ttft_auto.params() if self.ttft_deadline == "auto" else self.ttft_deadline,
                                self.stall_auto.params() if self.stall_timeout == "auto" else self.stall_timeout)


DEFAULT_MODEL = ModelCfg()


def _deep_merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in own.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _written(cfg: ModelCfg) -> dict[str, Any]:
    return cfg.model_dump(exclude_unset=True, by_alias=True)


def inherit(models: Mapping[str, ModelCfg], name: str) -> ModelCfg:
    """The settings of model ``name``: its entry over ``"*"`` over the defaults (raises
    ``ValidationError`` when the combination is invalid, e.g. ``"*"``'s floor over its ceiling)."""
    star, own = models.get(STAR), models.get(name)
    if star is None or name == STAR:
        return own or DEFAULT_MODEL
    base = _written(star)
    if name in star.fallbacks:
        base.pop("fallbacks", None)
    if own is None:
        return ModelCfg.model_validate(base) if name in star.fallbacks else star
    return ModelCfg.model_validate(_deep_merge(base, _written(own)))


def resolve_all(models: Mapping[str, ModelCfg]) -> tuple[dict[str, ModelCfg], list[tuple[str, Any, str]]]:
    """Every listed model's inherited settings, and the problems of combinations that are invalid."""
    out: dict[str, ModelCfg] = {}
    problems: list[tuple[str, Any, str]] = []
    for name in models:
        try:
            out[name] = inherit(models, name)
        except ValidationError as exc:
            for e in exc.errors():
                path = ".".join(str(p) for p in e["loc"])
                problems.append((f"models.{name}.{path}" if path else f"models.{name}", NO_VALUE,
                                 "with what it inherits from models.*: " + e["msg"].removeprefix("Value error, ")))
    return out, problems


def chain_problems(models: Mapping[str, ModelCfg], resolved: Mapping[str, ModelCfg],
                   served: Collection[str]) -> list[tuple[str, Any, str]]:
    """Fallback chains: a model falling back to itself, to a model no pool serves, or in a loop
    (following each target's own fallbacks).  ``served``: the models some pool serves."""
    problems: list[tuple[str, Any, str]] = []
    for name, cfg in models.items():
        for k, fb in enumerate(cfg.fallbacks):
            where = f"models.{name}.fallbacks[{k}]"
            if fb == name:
                problems.append((where, fb, "a model cannot fall back to itself"))
            elif fb not in served:
                problems.append((where, fb, "no pool serves this model"))
    reported: set[frozenset[str]] = set()
    for name in sorted(n for n in resolved if n != STAR):
        for k, fb in enumerate(resolved[name].fallbacks):
            if fb == name:
                continue  # reported above, or inherited from "*" (never: targets do not inherit)
            loop = _loop(resolved, models, name, fb)
            if loop is not None and frozenset(loop) not in reported:
                reported.add(frozenset(loop))
                inherited = [m for m in loop[1:-1] if m not in models or "fallbacks" not in models[m].model_fields_set]
                note = f" ({', '.join(inherited)}: fallbacks from models.*)" if inherited else ""
                problems.append((f"models.{name}.fallbacks[{k}]", fb,
                                 "the fallback chain loops: " + " -> ".join(loop) + note))
    return problems


def _loop(resolved: Mapping[str, ModelCfg], models: Mapping[str, ModelCfg], start: str,
          first: str) -> list[str] | None:
    """The path start -> first -> ... back to start, following fallbacks depth-first, or None."""
    stack: list[tuple[str, list[str]]] = [(first, [start, first])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        if node == start:
            return path
        if node in seen:
            continue
        seen.add(node)
        if node in models and node not in resolved:
            continue  # its own settings are invalid (reported): no chain to follow
        cfg = resolved.get(node) or inherit(models, node)
        stack.extend((nxt, [*path, nxt]) for nxt in cfg.fallbacks)
    return None
