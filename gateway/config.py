"""Gateway configuration: YAML validated once into frozen models.

An invalid file raises :class:`ConfigError` naming the file, the field path, the value
and the reason, e.g. ``configs/x.yaml: pools[0].endpoints[1].url = 'htp://a': must be an
http(s) URL``."""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from gateway.config_auth import AuthCfg, SharedLimitsCfg, TenantCfg  # noqa: F401 (re-exported)
from gateway.config_fleet import CanaryCfg, RegistryCfg, _Model  # one frozen, strict base for every section
from gateway.config_env import expand_env
from gateway.config_models import NO_VALUE, HedgeCfg, ModelCfg, chain_problems, inherit, resolve_all  # noqa: F401
from gateway.config_resilience import (BreakerCfg, BudgetCfg, HealthCfg, LatencyCfg, LoadCfg,  # noqa: F401
                                       OutlierCfg, RetryCfg, TimeoutsCfg)
from gateway.redact import MISSING as _MISSING
from gateway.redact import redact
from routing.balance import BALANCERS
from routing.deadlines import DeadlineSettings
from routing.plan import RoutingParams

DEFAULT_CONFIG = Path(__file__).parent / "data" / "local.yaml"


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` holds (field path, value, reason)."""

    def __init__(self, file: str, problems: list[tuple[str, Any, str]]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for path, value, reason in self.problems:
            value, reason = redact(path, value, reason)
            shown = "" if value is _MISSING else f" = {value!r}"
            out.append(f"{self.file}: {path or '<root>'}{shown}: {reason}")
        return out


class LocationCfg(_Model):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    name: str | None = None


class GatewayCfg(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    location: LocationCfg
    region: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    keepalive_comment_s: float = Field(default=15.0, gt=0)
    admin_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # who may call /admin/*
    access_log: str = Field(default="stdout", min_length=1)  # stdout | stderr | off | a file path (JSON lines)
    # on SIGTERM/SIGINT: /readyz answers 503 "draining" for drain_notice_s while requests are still
    # served (a load balancer takes the gateway out), then the listener closes and requests in
    # flight get up to drain_timeout_s to finish
    drain_notice_s: float = Field(default=0.0, ge=0)
    drain_timeout_s: float = Field(default=60.0, ge=0)
    # seconds between checks of the config file; a change (a Kubernetes ConfigMap's `..data`
    # symlink swap included) reloads as SIGHUP does; 0: off
    config_watch_s: float = Field(default=2.0, ge=0)
    # the client side's bounds (docs/security.md): a request head must arrive within
    # header_timeout_s of its first byte, a body within body_timeout_s; connections beyond
    # max_connections (per process) are closed at once.  Read at start (not on reload).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=10000, ge=1)
    # the generation endpoints served by the gateway's own HTTP/1.1 protocol, everything else by
    # aiohttp on the same connection (gateway/front.py); false: aiohttp serves every request
    fast_lane: bool = True
    metrics_networks: tuple[str, ...] | None = None  # who may scrape /metrics; default: admin_networks
    # the header trusted proxies write the client's address into (RFC 7239 `forwarded` or the
    # de-facto `x-forwarded-for`); the other one is ignored, so a client cannot choose it
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"

    @field_validator("access_log")
    @classmethod
    def _access_log(cls, v: str) -> str:
        if v not in ("stdout", "stderr", "off") and not Path(v).expanduser().resolve().parent.is_dir():
            raise ValueError(f"the folder of {v!r} does not exist (or use stdout, stderr or off)")
        return v

    @field_validator("trusted_proxies", "admin_networks", "metrics_networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for net in v or ():
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"{net!r} is not an IP network ({exc})") from None
        return v


class UpstreamLimitsCfg(_Model):
    """Bounds on what a pool may send (docs/security.md).  Crossing one fails the attempt as
    ``upstream_too_large``: the next candidate is tried, a stream resumes elsewhere or ends with
    the in-band error."""

    max_head_bytes: int = Field(default=64 * 1024, gt=0)  # status line and headers
    max_event_bytes: int = Field(default=4 * 1024 * 1024, gt=0)  # one SSE event (and what precedes the first token)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)  # a non-stream answer, or one assembled from a stream
    max_error_body_bytes: int = Field(default=64 * 1024, gt=0)  # the body of a 4xx/5xx
    resume_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=0)  # kept per stream for a resume
    resume_buffer_total_bytes: int = Field(default=256 * 1024 * 1024, ge=0)  # for all streams of a gateway


class GeoipCfg(_Model):
    database: str = "embedded"
    cache_size: int = Field(default=65536, ge=0)


class RoutingCfg(_Model):
    policy: str = "geo_latency"
    balancer: str = "p2c"
    geo_base_ms: float = Field(default=5.0, ge=0)
    geo_ms_per_1000km: float = Field(default=10.0, ge=0)
    queue_ms_per_waiting: float = Field(default=50.0, ge=0)
    queue_ms_per_running: float = Field(default=2.0, ge=0)
    kv_pressure_ms: float = Field(default=200.0, ge=0)
    error_penalty_ms: float = Field(default=500.0, ge=0)
    cost_ms_per_dollar: float = Field(default=0.0, ge=0)
    panic_threshold: float = Field(default=0.5, ge=0, le=1)
    max_pools: int = Field(default=8, ge=1)

    def params(self) -> RoutingParams:
        fields = self.model_dump(exclude={"policy", "balancer"})
        return RoutingParams(**fields)


class RegionCfg(_Model):
    name: str = Field(min_length=1)
    location: LocationCfg
    jurisdiction: str | None = None
    tags: tuple[str, ...] = ()


class EndpointCfg(_Model):
    id: str | None = None
    url: str
    weight: float = Field(default=1.0, gt=0)
    # probe this instead of url + health.path: `infercdn worker vllm --control-port` answers 503
    # while draining, which vLLM's own /health does not
    health_url: str | None = None

    # re-resolve the host of `url` this often; each address becomes an endpoint `<id>@<address>`
    dns_refresh_s: float | None = Field(default=None, gt=0)

    @field_validator("health_url")
    @classmethod
    def _health_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as http://10.0.0.5:9000/health")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v.split("://", 1)[1]) == 0:
            raise ValueError("must be an http(s) URL such as http://10.0.0.5:8000")
        return v.rstrip("/").removesuffix("/v1")


class SimulateCfg(_Model):
    endpoints: int = Field(default=2, ge=1, le=64)
    ttft_ms: float = Field(default=40.0, ge=0)
    itl_ms: float = Field(default=15.0, ge=0)
    rtt_ms: float | Literal["auto"] = "auto"
    max_num_seqs: int = Field(default=64, ge=1)


class LaunchCfg(_Model):
    """Local runs (`infercdn up --engine vllm`): start this pool's endpoint on this machine with
    `infercdn worker vllm` (the tiny model on the CPU unless `model_dir` says otherwise)."""

    engine: Literal["vllm"] = "vllm"
    model_dir: str | None = None  # default: `make tiny-model`'s cached model
    max_model_len: int = Field(default=2048, gt=0)
    kv_cache_memory_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_num_seqs: int | None = Field(default=None, ge=1)
    extra_args: tuple[str, ...] = ()  # passed to vLLM unchanged


class PoolCfg(_Model):
    name: str = Field(min_length=1)
    region: str
    models: dict[str, str]
    endpoints: tuple[EndpointCfg, ...] = ()
    simulate: SimulateCfg | None = None
    launch: LaunchCfg | None = None
    tags: tuple[str, ...] = ()
    price_per_mtok: float | None = Field(default=None, ge=0)
    tier: int = Field(default=0, ge=0)
    draining: bool = False
    max_context: int | None = Field(default=None, gt=0)
    can_continue: bool = True
    ttft_deadline_s: float | None = Field(default=None, gt=0)  # overrides the model's
    # accepts an assistant-prefill continuation (continue_final_message); false: a resume onto
    # this pool from another model asks the original request (gateway.forward.continuation)
    prefill: bool = True

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):  # ["a", "b"] means each served under its own name
            return {str(m): str(m) for m in v}
        return v

    @model_validator(mode="after")
    def _has_endpoints(self) -> PoolCfg:
        if not self.endpoints and self.simulate is None and self.launch is None:
            raise ValueError("a pool needs `endpoints` (or `simulate` / `launch` for local runs)")
        if not self.models:
            raise ValueError("a pool must serve at least one model")
        return self


class Config(_Model):
    def pool_cfg(self, name: str) -> PoolCfg | None:
        return next((p for p in self.pools if p.name == name), None)

    def deadline_inputs(self, model: str) -> tuple[DeadlineSettings, dict[str, float]]:
        """``model``'s deadline settings and each pool's own ``ttft_deadline_s`` (where set),
        read per request: built once per models and pools sections (a copy with other
        sections builds them again)."""
        private = self.__pydantic_private__
        assert private is not None
        key, cache = private["_deadline_cache"] or ((None, None), {})
        if key[0] is not self.models or key[1] is not self.pools:
            cache = {}
            self._deadline_cache = ((self.models, self.pools), cache)
        got = cache.get(model)
        if got is None:
            pools = {p.name: p.ttft_deadline_s for p in self.pools if p.ttft_deadline_s is not None}
            got = cache[model] = (self.model_cfg(model).deadline_settings(), pools)
        return got

    def model_cfg(self, model: str) -> ModelCfg:
        """Settings of ``model``: its own entry over the ``"*"`` entry over the defaults, field by
        field (see ``gateway.config_models``); cached per models section."""
        # the private attributes' dict read directly: pydantic's __getattr__ is slow on this path
        private = self.__pydantic_private__
        assert private is not None
        models, cache = private["_model_cache"] or (None, {})
        if models is not self.models:
            cache = {}
            self._model_cache = (self.models, cache)
        got = cache.get(model)
        if got is None:
            got = cache[model] = inherit(self.models, model)
        return got

    gateway: GatewayCfg
    geoip: GeoipCfg = GeoipCfg()
    routing: RoutingCfg = RoutingCfg()
    health: HealthCfg = HealthCfg()
    outlier: OutlierCfg = OutlierCfg()
    latency: LatencyCfg = LatencyCfg()
    load: LoadCfg = LoadCfg()
    retry: RetryCfg = RetryCfg()
    timeouts: TimeoutsCfg = TimeoutsCfg()
    budget: BudgetCfg = BudgetCfg()
    breaker: BreakerCfg = BreakerCfg()
    models: dict[str, ModelCfg] = Field(default_factory=dict)
    auth: AuthCfg = AuthCfg()
    upstream_limits: UpstreamLimitsCfg = UpstreamLimitsCfg()
    regions: tuple[RegionCfg, ...] = Field(min_length=1)
    pools: tuple[PoolCfg, ...] = ()  # at least one, unless `registry` brings them
    registry: RegistryCfg | None = None
    canary: CanaryCfg | None = None
    _model_cache: tuple[Any, dict[str, ModelCfg]] | None = PrivateAttr(default=None)
    _deadline_cache: tuple[tuple[Any, Any], dict[str, tuple[DeadlineSettings, dict[str, float]]]] | None = \
        PrivateAttr(default=None)


def _cross_checks(cfg: Config) -> list[tuple[str, Any, str]]:
    problems: list[tuple[str, Any, str]] = []
    regions = [r.name for r in cfg.regions]
    for i, name in enumerate(regions):
        if regions.index(name) != i:
            problems.append((f"regions[{i}].name", name, "duplicate region name"))
    if cfg.gateway.region is not None and cfg.gateway.region not in regions:
        problems.append(("gateway.region", cfg.gateway.region, f"unknown region; known: {regions}"))
    seen_pools: set[str] = set()
    seen_eps: set[str] = set()
    for i, pool in enumerate(cfg.pools):
        if pool.name in seen_pools:
            problems.append((f"pools[{i}].name", pool.name, "duplicate pool name"))
        seen_pools.add(pool.name)
        if pool.region not in regions:
            problems.append((f"pools[{i}].region", pool.region, f"unknown region; known: {regions}"))
        for j, ep in enumerate(pool.endpoints):
            eid = ep.id or f"{pool.name}-{j}"
            if eid in seen_eps:
                problems.append((f"pools[{i}].endpoints[{j}].id", eid, "duplicate endpoint id"))
            seen_eps.add(eid)
    if not cfg.pools and cfg.registry is None:
        problems.append(("pools", _MISSING, "at least one pool is needed (or a `registry` of self-registered ones)"))
    served = {m for p in cfg.pools for m in p.models}
    if cfg.registry is not None:  # registered pools may serve any model: no "no pool serves" checks
        served = _AnyModel(served)
    resolved, inherited = resolve_all(cfg.models)
    problems += inherited
    problems += chain_problems(cfg.models, resolved, served)
    for name, model in cfg.models.items():
        if name != "*" and name not in served:
            problems.append((f"models.{name}", _MISSING, "no pool serves this model"))
        for k, pool in enumerate(model.larger_context):
            if pool not in seen_pools:
                problems.append((f"models.{name}.larger_context[{k}]", pool, "unknown pool"))
    keys: set[str] = set()
    for i, tenant in enumerate(cfg.auth.tenants):
        for k, key in enumerate(tenant.api_keys):
            if key in keys:
                problems.append((f"auth.tenants[{i}].api_keys[{k}]", "***", "the same key is given twice"))
            keys.add(key)
        for k, model in enumerate(tenant.models):
            if model not in served:
                problems.append((f"auth.tenants[{i}].models[{k}]", model, "no pool serves this model"))
    for i, tenant in enumerate(cfg.auth.tenants):
        if tenant.policy is not None and tenant.policy not in _policy_names():
            problems.append((f"auth.tenants[{i}].policy", tenant.policy,
                             f"unknown policy; known: {sorted(_policy_names())}"))
    if cfg.routing.policy not in _policy_names():
        problems.append(("routing.policy", cfg.routing.policy, f"unknown policy; known: {sorted(_policy_names())}"))
    if cfg.routing.balancer not in BALANCERS:
        problems.append(("routing.balancer", cfg.routing.balancer, f"unknown balancer; known: {sorted(BALANCERS)}"))
    return problems


class _AnyModel(set):  # type: ignore[type-arg]
    def __contains__(self, item: object) -> bool:
        return True


def _policy_names() -> set[str]:
    try:
        from routing.policies import POLICIES
    except ImportError:  # pragma: no cover - routing core always ships policies
        return {"geo_latency"}
    return set(POLICIES)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _shown(value: Any) -> Any:
    """Scalars are shown as they are; whole sections are not repeated in the message."""
    return _MISSING if isinstance(value, (dict, list, tuple)) else value


def parse_config(data: Any, file: str = "<config>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(file, [("", _MISSING, "the top level must be a mapping")])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = [(tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))),
                   e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        # an error inside an item also fails its container (e.g. "at least 1 item"): keep the inner one
        inner = [(loc, msg) for loc, msg in errors
                 if not any(len(other) > len(loc) and other[: len(loc)] == loc for other, _ in errors)]
        raise ConfigError(file, [(_loc(loc), _shown(_value_at(data, loc)), msg) for loc, msg in inner]) from None
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(file, problems)
    return cfg


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true/false.  YAML 1.1 also reads on/off/yes/no/y/n as booleans,
    which turned ``access_log: off`` (a string field) into False; pydantic still reads those words
    as booleans where a field is one (``enabled: off``)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate ``path`` (the embedded default when None)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [("", _MISSING, f"cannot read file: {exc.strerror or exc}")]) from None
    text, unset = expand_env(text, os.environ)
    if unset:
        raise ConfigError(str(p), [(f"line {n}", _MISSING, f"${{{name}}}: not set in the environment "
                                    f"(or give a default: ${{{name}:-value}})") for n, name in unset])
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(p), [("", _MISSING, f"invalid YAML: {where}{getattr(exc, 'problem', exc)}")]) from None
    return parse_config(data, str(path) if path is not None else str(p))
