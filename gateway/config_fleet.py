"""Config sections of the open fleet: the registry of self-registered endpoints, the providers
allowed to register (their trust granted here), and the canary that checks what they serve."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def hex_digests(v: tuple[str, ...]) -> tuple[str, ...]:
    for h in v:
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower()):
            raise ValueError("not a hex SHA-256 digest (64 hex digits); the value is not shown")
    return tuple(h.lower() for h in v)


class ProviderCfg(_Model):
    """A provider allowed to register endpoints: its trust is granted here, never claimed."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    token_sha256: tuple[str, ...] = Field(min_length=1)  # hex SHA-256 of its tokens (rotation: two)
    tags: tuple[str, ...] = ()  # e.g. [verified, soc2]: what tenants' required_tags match
    jurisdictions: tuple[str, ...] | None = None  # regions it may announce in; None: any
    revoked: bool = False  # its endpoints get no traffic

    @field_validator("token_sha256", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return hex_digests(v)


class RegistryCfg(_Model):
    """Endpoints that workers register themselves (`infercdn worker ... --register`), in Redis."""

    redis_url: str = Field(pattern=r"^(redis|rediss|unix)://")
    key_prefix: str = "infercdn:"
    poll_s: float = Field(default=1.0, gt=0)  # how often the registry is read
    timeout_s: float = Field(default=2.0, gt=0)
    max_clock_skew_s: float = Field(default=30.0, ge=0)  # tolerance on an announcement's signed expiry
    providers: tuple[ProviderCfg, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> RegistryCfg:
        names = [p.name for p in self.providers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate provider names: {dup}")
        return self

    def provider(self, name: str) -> ProviderCfg | None:
        return next((p for p in self.providers if p.name == name), None)


class CanaryCfg(_Model):
    """Output verification: fixed greedy prompts to every endpoint, compared with the token ids
    of reference endpoints (pools carrying every ``reference_tags``)."""

    enabled: bool = True
    interval_s: float = Field(default=60.0, gt=0)  # per endpoint
    prompts: tuple[str, ...] = Field(default=("The capital of France is", "1, 2, 3, 4,"), min_length=1)
    max_tokens: int = Field(default=8, ge=1, le=64)
    tolerance: float = Field(default=0.25, ge=0, lt=1)  # share of reference tokens that may disagree
    timeout_s: float = Field(default=10.0, gt=0)
    reference_tags: tuple[str, ...] = ("verified",)
    reference_ttl_s: float = Field(default=600.0, gt=0)  # a reference answer is asked again after this
    hold_new: bool = True  # registered endpoints get no traffic before their first check
