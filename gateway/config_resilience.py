"""Config sections of how endpoints are watched and retried: health checks, outlier
detection, latency and load observation, retries and their budget, the circuit breaker and
connect timeouts (each read by ``gateway.snapshot.observation_params`` or the forward path)."""
from __future__ import annotations

from pydantic import Field

from gateway.config_fleet import _Model


class HealthCfg(_Model):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    path: str = "/health"
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=2, ge=1)


class OutlierCfg(_Model):
    consecutive_failures: int = Field(default=3, ge=1)
    base_ejection_s: float = Field(default=10.0, gt=0)
    max_ejection_s: float = Field(default=300.0, gt=0)
    max_ejected_percent: float = Field(default=50.0, ge=0, le=100)


class LatencyCfg(_Model):
    half_life_s: float = Field(default=30.0, gt=0)


class LoadCfg(_Model):
    scrape_interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)  # a busy engine answers /metrics slowly
    stale_s: float = Field(default=5.0, gt=0)
    enabled: bool = True


class RetryCfg(_Model):
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_base_ms: float = Field(default=5.0, ge=0)
    backoff_max_ms: float = Field(default=100.0, ge=0)
    max_retry_after_s: float = Field(default=5.0, ge=0)
    # resumes of one request at most; a 429 whose Retry-After is at most this is waited out on
    # the same endpoint when no other candidate is eligible
    max_resumes: int = Field(default=3, ge=0)
    max_wait_s: float = Field(default=2.5, ge=0)
    client_retry_after_max_s: float = Field(default=60.0, ge=1)  # an upstream's Retry-After, capped for clients


class BudgetCfg(_Model):
    """Retries (and hedges) are bounded to a fraction of recent requests, so that a regional
    outage cannot multiply the load on the regions that are left."""

    ratio: float = Field(default=0.5, ge=0)  # extra attempts per request, on average
    min_per_s: float = Field(default=10.0, ge=0)  # always allowed, for low traffic
    window_s: float = Field(default=10.0, gt=0)


class BreakerCfg(_Model):
    enabled: bool = True
    failures: int = Field(default=5, ge=1)  # consecutive failures that open the breaker
    open_s: float = Field(default=5.0, gt=0)  # first open period; doubles while it keeps failing
    max_open_s: float = Field(default=60.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)  # trial requests let through when half-open


class TimeoutsCfg(_Model):
    connect_s: float = Field(default=2.0, gt=0)  # TCP connect to an endpoint
