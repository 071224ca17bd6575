"""Config sections of who may call: tenants (keys, allowed models, residency, limits and token
budgets) and the fleet-wide limits kept in Redis (``auth.shared``)."""
from __future__ import annotations

from pydantic import Field, field_validator

from gateway.config_fleet import _Model, hex_digests


class TenantCfg(_Model):
    """Who may call, with which keys, and what their requests may use."""

    name: str = Field(min_length=1)
    api_keys: tuple[str, ...] = ()  # plain keys (fine for local runs)
    api_key_sha256: tuple[str, ...] = ()  # hex SHA-256 of keys: keeps secrets out of config files
    models: tuple[str, ...] = ()  # allowed public models; empty: all
    required_tags: tuple[str, ...] = ()  # e.g. [soc2]: only pools carrying every tag
    jurisdictions: tuple[str, ...] | None = None  # data residency: only regions in these jurisdictions
    requests_per_s: float | None = Field(default=None, gt=0)  # token bucket (per gateway, or auth.shared)
    burst: int = Field(default=20, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    policy: str | None = None  # this tenant's ranking policy (default: routing.policy)
    cost_slack_ms: float | None = Field(default=None, ge=0)  # policy cost: pools within this of the best
    # prompt (estimated at admission, corrected by the pool's usage) + completion tokens per
    # rolling minute (per gateway, or auth.shared); a stream that crosses it finishes, the next
    # request is refused with 429 and Retry-After
    tokens_per_minute: int | None = Field(default=None, ge=1)

    @field_validator("api_key_sha256")
    @classmethod
    def _hex(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return hex_digests(v)


class SharedLimitsCfg(_Model):
    """Tenant limits enforced for all gateways together, through Redis."""

    redis_url: str = Field(pattern=r"^(redis|rediss|unix)://")
    key_prefix: str = "infercdn:"  # several fleets on one Redis
    timeout_ms: float = Field(default=50.0, gt=0)  # slower than this: this gateway's own limits decide
    lease_s: float | None = Field(default=None, gt=0)  # a concurrency slot's lapse; default: longest total deadline


class AuthCfg(_Model):
    required: bool = False  # false: requests without a key are served as the anonymous tenant
    tenants: tuple[TenantCfg, ...] = ()
    anonymous: TenantCfg = TenantCfg(name="anonymous")
    shared: SharedLimitsCfg | None = None  # limits per fleet instead of per gateway
