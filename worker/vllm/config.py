"""The worker's config: what to serve and how to supervise it.

From a small YAML file (keys are the field names below), flags, or both (a flag given on the
command line wins).  Frozen and validated once; an error names the file, the field, the value and
why.  Nothing here is CPU-specific: ``dtype: float32`` and ``enforce_eager: true`` are what the
CPU wants, and come from the config or flags, never from defaults."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    def __init__(self, source: str, field_name: str, value: object, reason: str) -> None:
        super().__init__(f"{source}: {field_name}={value!r}: {reason}")
        self.source, self.field, self.value, self.reason = source, field_name, value, reason


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n (n = consecutive failures, from 1): initial * factor**(n-1), capped."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    # A server that stayed ready this long is healthy again: the next failure starts at initial_s.
    stable_after_s: float = 60.0


@dataclass(frozen=True)
class WorkerConfig:
    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    python: str | None = None
    work_dir: str | None = None
    offline: bool | None = None  # None: offline when ``model`` is a local directory
    start_timeout_s: float = 600.0
    drain_notice_s: float = 2.0  # draining is visible this long before the count of streams matters
    drain_timeout_s: float = 60.0
    stop_grace_s: float = 10.0
    control_host: str = "127.0.0.1"
    control_port: int | None = None
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


_POSITIVE = ("port", "max_model_len", "kv_cache_memory_bytes", "max_num_seqs", "start_timeout_s",
             "stop_grace_s", "control_port")
_NON_NEGATIVE = ("drain_notice_s", "drain_timeout_s")
_FIELDS = {f.name: f for f in dataclasses.fields(WorkerConfig)}
_BACKOFF_FIELDS = {f.name for f in dataclasses.fields(Backoff)}


def build_config(values: Mapping[str, Any], source: str = "<flags>") -> WorkerConfig:
    """Validate ``values`` (YAML mapping and/or flags) into a WorkerConfig."""
    for key in values:
        if key not in _FIELDS:
            raise ConfigError(source, key, values[key], "unknown field")
    if not values.get("model"):
        raise ConfigError(source, "model", values.get("model"), "required: a model path or name")
    kwargs = dict(values)
    for key in _POSITIVE + _NON_NEGATIVE:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, value, "must be a number")
        if value < 0 or (value == 0 and key in _POSITIVE and key != "control_port"):
            raise ConfigError(source, key, value, "must be positive")
    for key in ("enforce_eager", "offline"):
        if kwargs.get(key) is not None and not isinstance(kwargs[key], bool):
            raise ConfigError(source, key, kwargs[key], "must be true or false")
    extra = kwargs.get("extra_args", ())
    if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
        raise ConfigError(source, "extra_args", extra, "must be a list of strings")
    kwargs["extra_args"] = tuple(extra)
    env = kwargs.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(source, "env", env, "must map names to strings")
    kwargs["backoff"] = _build_backoff(kwargs.get("backoff") or {}, source)
    return WorkerConfig(**kwargs)


def _build_backoff(values: Any, source: str) -> Backoff:
    if isinstance(values, Backoff):
        return values
    if not isinstance(values, Mapping):
        raise ConfigError(source, "backoff", values, "must be a mapping")
    for key, value in values.items():
        if key not in _BACKOFF_FIELDS:
            raise ConfigError(source, f"backoff.{key}", value, "unknown field")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(source, f"backoff.{key}", value, "must be a non-negative number")
    backoff = Backoff(**values)
    if backoff.factor < 1:
        raise ConfigError(source, "backoff.factor", backoff.factor, "must be at least 1")
    if backoff.max_s < backoff.initial_s:
        raise ConfigError(source, "backoff.max_s", backoff.max_s, "must be at least initial_s")
    return backoff


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> WorkerConfig:
    """Read a YAML worker config; ``overrides`` (flags that were given) win over the file."""
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(source, "<file>", None, str(exc)) from exc
    if not isinstance(data, Mapping):
        raise ConfigError(source, "<root>", type(data).__name__, "must be a mapping")
    merged = {**data, **(overrides or {})}
    return build_config(merged, source)
