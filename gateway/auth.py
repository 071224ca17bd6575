"""API keys → tenant policy: allowed models, residency and tags, and per-gateway limits.

Keys are compared by SHA-256 (config may hold only digests).  Limits are in-process (one
gateway); sharing them across replicas goes through Redis (`auth.shared`, gateway/limits.py)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import AuthCfg, TenantCfg
from gateway.errors import ModelNotFound, RateLimited, Unauthorized


@dataclass(slots=True)
class TenantState:
    cfg: TenantCfg
    tokens: float = 0.0
    refilled: float = 0.0
    inflight: int = 0
    budget: float | None = None  # tokens left of tokens_per_minute (may be negative); None: full
    budget_at: float = 0.0
    # the policy's sets as the planner takes them (built with the state and on reload, not per request)
    required_tags: frozenset[str] = frozenset()
    jurisdictions: frozenset[str] | None = None
    models: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.use(self.cfg)

    def use(self, cfg: TenantCfg) -> None:
        """Take ``cfg`` (a reload keeps the state's buckets)."""
        self.cfg = cfg
        self.required_tags = frozenset(cfg.required_tags)
        self.jurisdictions = frozenset(cfg.jurisdictions) if cfg.jurisdictions is not None else None
        self.models = frozenset(cfg.models)

    def admit(self, now: float) -> None:
        """Take one request from the bucket and a concurrency slot, or raise 429."""
        c = self.cfg
        if c.requests_per_s is not None:
            self.tokens = min(float(c.burst), self.tokens + (now - self.refilled) * c.requests_per_s)
            self.refilled = now
            if self.tokens < 1.0:
                wait = (1.0 - self.tokens) / c.requests_per_s
                raise RateLimited(f"tenant {c.name!r} is over its rate of {c.requests_per_s:g} requests/s",
                                  headers={"Retry-After": str(max(1, round(wait)))})
            self.tokens -= 1.0
        if c.max_concurrent is not None and self.inflight >= c.max_concurrent:
            raise concurrency_limited(f"tenant {c.name!r} already has {c.max_concurrent} requests in flight")
        self.inflight += 1

    def done(self) -> None:
        self.inflight = max(0, self.inflight - 1)


@dataclass(slots=True)
class Authenticator:
    cfg: AuthCfg
    clock: Callable[[], float]
    by_digest: dict[str, TenantState] = field(default_factory=dict)
    anonymous: TenantState | None = None

    @classmethod
    def build(cls, cfg: AuthCfg, clock: Callable[[], float], previous: Authenticator | None = None) -> Authenticator:
        """Index the tenants; a reload keeps the buckets of tenants that remain."""
        old = {t.cfg.name: t for t in (previous.by_digest.values() if previous else ())}
        out = cls(cfg, clock)
        for tenant in cfg.tenants:
            state = old.get(tenant.name) or TenantState(tenant, float(tenant.burst), clock())
            state.use(tenant)
            for key in tenant.api_keys:
                out.by_digest[_digest(key)] = state
            for digest in tenant.api_key_sha256:
                out.by_digest[digest] = state
        out.anonymous = TenantState(cfg.anonymous, float(cfg.anonymous.burst), clock())
        return out

    def tenant(self, authorization: str | None) -> TenantState:
        key = _bearer(authorization)
        if key is not None:
            state = self.by_digest.get(_digest(key))
            if state is not None:
                return state
            if self.cfg.required:
                raise Unauthorized("Incorrect API key provided")
        elif self.cfg.required:
            raise Unauthorized("You didn't provide an API key: send it as 'Authorization: Bearer <key>'")
        assert self.anonymous is not None
        return self.anonymous


def concurrency_limited(message: str) -> RateLimited:
    exc = RateLimited(message, headers={"Retry-After": "1"})
    exc.limit = "concurrency"
    return exc


def check_model(tenant: TenantState, model: str) -> None:
    allowed = tenant.cfg.models
    if allowed and model not in allowed:
        raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it", param="model")


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()

