"""Tenant limits shared by every gateway of a fleet, through Redis (``auth.shared``).

Without it each gateway enforces ``requests_per_s``/``burst`` and ``max_concurrent`` on its own,
so N gateways let a tenant through N times over.  With it one Lua script, one round trip per
request, decides for the whole fleet:

- the rate is a token bucket in a hash (``tokens``, ``at``), refilled by Redis's own clock, so
  gateways whose clocks disagree still share one bucket;
- concurrency is a sorted set of leases (member: a random id per admitted request, score: when
  the lease lapses); a gateway that dies without releasing its leases holds them until they
  lapse (``lease_s``, the longest a request may last) instead of forever;
- ``tokens_per_minute`` is a second bucket (``tokens``, ``at``) charged the prompt's estimate at
  admission and corrected when the request ends (``charge``, one more call, in the background);
  see ``gateway.quota``.

Redis slower than ``timeout_ms`` or down: the gateway's own limits decide (fail open, as Envoy's
global rate limit does by default), and the first failure of each minute is logged."""
from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import concurrency_limited
from gateway.errors import RateLimited
from gateway.quota import Bucket, Quota, go_duration

log = logging.getLogger("infercdn.limits")

# KEYS: request bucket hash, lease zset, token bucket hash.  ARGV: rate (requests/s, 0 = none),
# burst, max concurrent (0 = none), lease id, lease seconds, tokens per minute (0 = none), the
# prompt's estimate.  Returns {1, requests left x1000, tokens left x1000} admitted, or refused:
# {0, "rate", wait_ms, 0, tokens left x1000}, {0, "concurrency"}, {0, "tokens", wait_ms,
# requests left x1000, tokens left x1000}.  (Redis turns Lua numbers into integers: hence x1000.)
_ADMIT = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) + tonumber(now_us) / 1e6
local rate, burst, max_conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tpm, need = tonumber(ARGV[6]), tonumber(ARGV[7])
local tokens, budget = burst, tpm
if tpm > 0 then
  local t = redis.call('HMGET', KEYS[3], 'tokens', 'at')
  if t[1] then
    budget = math.min(tpm, tonumber(t[1]) + (now - tonumber(t[2])) * tpm / 60)
  end
end
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  if b[1] then
    tokens = math.min(burst, tonumber(b[1]) + (now - tonumber(b[2])) * rate)
  end
  if tokens < 1 then
    return {0, 'rate', math.ceil((1 - tokens) / rate * 1000), 0, math.floor(budget * 1000)}
  end
end
if tpm > 0 and budget < math.min(need, tpm) then
  return {0, 'tokens', math.ceil((math.min(need, tpm) - budget) * 60 / tpm * 1000), math.floor(tokens * 1000),
          math.floor(budget * 1000)}
end
if max_conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_conc then
    return {0, 'concurrency'}
  end
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
  redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5])) + 1)
end
if rate > 0 then
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
end
if tpm > 0 then
  budget = budget - need
  redis.call('HSET', KEYS[3], 'tokens', budget, 'at', now)
  redis.call('EXPIRE', KEYS[3], 120 + math.ceil(math.max(0, -budget) * 60 / tpm))
end
return {1, math.floor(tokens * 1000), math.floor(budget * 1000)}
"""

# KEYS: token bucket hash.  ARGV: tokens per minute, tokens to take (negative: give back).
_CHARGE = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) + tonumber(now_us) / 1e6
local tpm = tonumber(ARGV[1])
local t = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local budget = tpm
if t[1] then
  budget = math.min(tpm, tonumber(t[1]) + (now - tonumber(t[2])) * tpm / 60)
end
budget = math.min(tpm, budget - tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'tokens', budget, 'at', now)
redis.call('EXPIRE', KEYS[1], 120 + math.ceil(math.max(0, -budget) * 60 / tpm))
return 1
"""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request: decided by this gateway alone (``local``), or fleet-wide with a
    concurrency ``lease`` to give back (None when the tenant has no concurrency limit);
    ``estimate``: the prompt tokens charged at admission; ``quota``: for the headers."""

    local: bool
    lease: str | None = None
    estimate: int = 0
    quota: Quota = Quota()


async def admit(shared: SharedLimits | None, tenant: Any, now: float, estimate: int = 1) -> Ticket:
    """Admit one request of ``tenant`` (a TenantState) whose prompt is estimated at ``estimate``
    tokens, or raise RateLimited (with the x-ratelimit-* headers)."""
    c = tenant.cfg
    if shared is None or (c.requests_per_s is None and c.max_concurrent is None and c.tokens_per_minute is None):
        return admit_local(tenant, now, estimate)
    return await shared.admit(tenant, now, estimate)


def admit_local(tenant: Any, now: float, estimate: int) -> Ticket:
    c = tenant.cfg
    budget = refill_budget(tenant, now)
    if budget is not None and budget < min(estimate, c.tokens_per_minute):
        raise _over_budget(c, quota(tenant, now), min(estimate, c.tokens_per_minute) - budget, "")
    try:
        tenant.admit(now)
    except RateLimited as exc:
        exc.headers.update(quota(tenant, now).headers())
        raise
    if budget is not None:
        tenant.budget = budget - estimate
    return Ticket(local=True, estimate=estimate, quota=quota(tenant, now))


def refill_budget(tenant: Any, now: float) -> float | None:
    """The tenant's token bucket refilled to ``now`` (None: no token limit)."""
    tpm = tenant.cfg.tokens_per_minute
    if tpm is None:
        return None
    if tenant.budget is None:  # new tenant (or a limit just configured): a full minute
        tenant.budget = float(tpm)
    tenant.budget = min(float(tpm), tenant.budget + max(0.0, now - tenant.budget_at) * tpm / 60.0)
    tenant.budget_at = max(now, tenant.budget_at)
    return tenant.budget


def peek(shared: SharedLimits | None, tenant: Any, now: float) -> dict[str, str]:
    """The headers of an answer given before admission (a bad body, an unknown model): this
    gateway's buckets, or nothing for a tenant whose limits Redis keeps."""
    c = tenant.cfg
    if shared is not None and (c.requests_per_s or c.max_concurrent or c.tokens_per_minute):
        return {}
    return quota(tenant, now).headers()


def quota(tenant: Any, now: float) -> Quota:
    """What this gateway knows of the tenant's limits (its own buckets), for the headers."""
    c = tenant.cfg
    requests = None
    if c.requests_per_s is not None:
        left = min(float(c.burst), tenant.tokens + max(0.0, now - tenant.refilled) * c.requests_per_s)
        requests = Bucket(c.burst, left, c.requests_per_s)
    budget = refill_budget(tenant, now)
    tokens = Bucket(c.tokens_per_minute, budget, c.tokens_per_minute / 60.0) if budget is not None else None
    return Quota(requests, tokens)


def _over_budget(c: Any, q: Quota, missing: float, where: str) -> RateLimited:
    wait = missing * 60.0 / c.tokens_per_minute
    exc = RateLimited(f"tenant {c.name!r} is over its budget of {c.tokens_per_minute} tokens per minute{where}; "
                      f"retry in {go_duration(wait)}",
                      headers={"Retry-After": str(max(1, math.ceil(wait))), **q.headers()})
    exc.limit = "tokens"
    return exc


def done(shared: SharedLimits | None, tenant: Any, ticket: Ticket, used: int | None = None) -> None:
    """The request ended having used ``used`` tokens (prompt + completion; None: unknown, the
    admission estimate stands): free its concurrency slot, correct its token charge."""
    delta = 0 if used is None else used - ticket.estimate
    if ticket.local:
        tenant.done()
        if tenant.cfg.tokens_per_minute is not None and tenant.budget is not None:
            tenant.budget = min(float(tenant.cfg.tokens_per_minute), tenant.budget - delta)
    elif shared is not None:
        shared.release(tenant, ticket.lease)
        if tenant.cfg.tokens_per_minute is not None and delta:
            shared.charge(tenant, delta)


@dataclass
class SharedLimits:
    url: str
    key_prefix: str
    timeout_s: float
    lease_s: float
    clock: Callable[[], float]  # the runtime's (it paces the warnings)
    client: Any = None
    script: Any = None
    charge_script: Any = None
    last_warning: float = field(default=float("-inf"))
    on_error: Any = None  # called with nothing on each failed Redis call (a metric)
    releases: set[asyncio.Task[None]] = field(default_factory=set)

    def connect(self) -> None:
        import redis.asyncio as aioredis  # only gateways configured with auth.shared need it

        self.client = aioredis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                              socket_connect_timeout=self.timeout_s)
        self.script = self.client.register_script(_ADMIT)
        self.charge_script = self.client.register_script(_CHARGE)

    async def close(self) -> None:
        for task in list(self.releases):
            await asyncio.gather(task, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    def _keys(self, tenant: str) -> list[str]:
        p = self.key_prefix
        return [f"{p}rate:{tenant}", f"{p}conc:{tenant}", f"{p}tokens:{tenant}"]

    async def admit(self, tenant: Any, now: float, estimate: int = 1) -> Ticket:
        """Admit one request of ``tenant`` (a TenantState) fleet-wide, or raise RateLimited;
        when Redis fails, the local limits decide."""
        c = tenant.cfg
        lease = os.urandom(8).hex() if c.max_concurrent is not None else None
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await self.script(keys=self._keys(c.name),
                                        args=[c.requests_per_s or 0, c.burst, c.max_concurrent or 0,
                                              lease or "", self.lease_s, c.tokens_per_minute or 0, estimate])
        except Exception as exc:  # noqa: BLE001 - any Redis trouble: fail open to the local limits
            self._warn(exc)
            return admit_local(tenant, now, estimate)
        if int(out[0]) == 1:
            return Ticket(local=False, lease=lease, estimate=estimate, quota=_shared_quota(c, out[1], out[2]))
        why = _text(out[1])
        if why == "rate":
            wait = int(out[2]) / 1000
            headers = {"Retry-After": str(max(1, round(wait))), **_shared_quota(c, 0, out[4]).headers()}
            raise RateLimited(f"tenant {c.name!r} is over its rate of {c.requests_per_s:g} requests/s "
                              "(all gateways together)", headers=headers)
        if why == "tokens":
            q = _shared_quota(c, out[3], out[4])
            raise _over_budget(c, q, int(out[2]) / 1000 * c.tokens_per_minute / 60.0, " (all gateways together)")
        raise concurrency_limited(f"tenant {c.name!r} already has {c.max_concurrent} requests in flight "
                                  "(all gateways together)")

    def charge(self, tenant: Any, tokens: int) -> None:
        """Correct the fleet-wide token bucket by ``tokens`` (negative: give back), in the
        background."""
        self._background(self._charge(tenant.cfg.name, tenant.cfg.tokens_per_minute, tokens))

    async def _charge(self, tenant: str, tpm: int, tokens: int) -> None:
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self.charge_script(keys=self._keys(tenant)[2:], args=[tpm, tokens])
        except Exception as exc:  # noqa: BLE001 - the fleet's count misses one correction
            self._warn(exc)

    def release(self, tenant: Any, lease: str | None) -> None:
        """Give the lease back, in the background (the answer is not held for it)."""
        if lease is None:
            return
        self._background(self._release(tenant.cfg.name, lease))

    def _background(self, call: Any) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self.releases.add(task)
        task.add_done_callback(self.releases.discard)

    async def _release(self, tenant: str, lease: str) -> None:
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self.client.zrem(self._keys(tenant)[1], lease)
        except Exception as exc:  # noqa: BLE001 - the lease lapses by itself
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error()
        now = self.clock()
        if now - self.last_warning >= 60.0:
            self.last_warning = now
            log.warning("shared tenant limits unavailable (%s: %s); each gateway applies its own until "
                        "Redis answers again", type(exc).__name__, exc or "timeout")


def _shared_quota(c: Any, requests_milli: Any, tokens_milli: Any) -> Quota:
    requests = Bucket(c.burst, int(requests_milli) / 1000, c.requests_per_s) if c.requests_per_s else None
    tokens = (Bucket(c.tokens_per_minute, int(tokens_milli) / 1000, c.tokens_per_minute / 60.0)
              if c.tokens_per_minute else None)
    return Quota(requests, tokens)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
