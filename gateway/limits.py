"""Tenant limits shared by every gateway of a fleet, through Redis (``auth.shared``).

Without it each gateway enforces ``requests_per_s``/``burst`` and ``max_concurrent`` on its own,
so N gateways let a tenant through N times over.  With it one Lua script, one round trip per
request, decides for the whole fleet:

- the rate is a token bucket in a hash (``tokens``, ``at``), refilled by Redis's own clock, so
  gateways whose clocks disagree still share one bucket;
- concurrency is a sorted set of leases (member: a random id per admitted request, score: when
  the lease lapses); a gateway that dies without releasing its leases holds them until they
  lapse (``lease_s``, the longest a request may last) instead of forever.

Redis slower than ``timeout_ms`` or down: the gateway's own limits decide (fail open, as Envoy's
global rate limit does by default), and the first failure of each minute is logged."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import RateLimited

log = logging.getLogger("infercdn.limits")

# KEYS: bucket hash, lease zset.  ARGV: rate (tokens/s, 0 = none), burst, max concurrent
# (0 = none), lease id, lease seconds.  Returns {1} admitted, {0, "rate", wait_ms}, {0, "concurrency"}.
_ADMIT = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) + tonumber(now_us) / 1e6
local rate, burst, max_conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = burst
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  if b[1] then
    tokens = math.min(burst, tonumber(b[1]) + (now - tonumber(b[2])) * rate)
  end
  if tokens < 1 then
    return {0, 'rate', math.ceil((1 - tokens) / rate * 1000)}
  end
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
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
end
return {1}
"""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request: decided by this gateway alone (``local``), or fleet-wide with a
    concurrency ``lease`` to give back (None when the tenant has no concurrency limit)."""

    local: bool
    lease: str | None = None


LOCAL = Ticket(local=True)


async def admit(shared: SharedLimits | None, tenant: Any, now: float) -> Ticket:
    """Admit one request of ``tenant`` (a TenantState) or raise RateLimited."""
    c = tenant.cfg
    if shared is None or (c.requests_per_s is None and c.max_concurrent is None):
        tenant.admit(now)
        return LOCAL
    return await shared.admit(tenant, now)


def done(shared: SharedLimits | None, tenant: Any, ticket: Ticket) -> None:
    if ticket.local:
        tenant.done()
    elif shared is not None:
        shared.release(tenant, ticket.lease)


@dataclass
class SharedLimits:
    url: str
    key_prefix: str
    timeout_s: float
    lease_s: float
    client: Any = None
    script: Any = None
    last_warning: float = field(default=float("-inf"))
    on_error: Any = None  # called with nothing on each failed Redis call (a metric)
    releases: set[asyncio.Task[None]] = field(default_factory=set)

    def connect(self) -> None:
        import redis.asyncio as aioredis  # only gateways configured with auth.shared need it

        self.client = aioredis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                              socket_connect_timeout=self.timeout_s)
        self.script = self.client.register_script(_ADMIT)

    async def close(self) -> None:
        for task in list(self.releases):
            await asyncio.gather(task, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    def _keys(self, tenant: str) -> list[str]:
        return [f"{self.key_prefix}rate:{tenant}", f"{self.key_prefix}conc:{tenant}"]

    async def admit(self, tenant: Any, now: float) -> Ticket:
        """Admit one request of ``tenant`` (a TenantState) fleet-wide, or raise RateLimited;
        when Redis fails, the local limits decide."""
        c = tenant.cfg
        lease = os.urandom(8).hex() if c.max_concurrent is not None else None
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await self.script(keys=self._keys(c.name),
                                        args=[c.requests_per_s or 0, c.burst, c.max_concurrent or 0,
                                              lease or "", self.lease_s])
        except Exception as exc:  # noqa: BLE001 - any Redis trouble: fail open to the local limits
            self._warn(exc)
            tenant.admit(now)
            return LOCAL
        if int(out[0]) == 1:
            return Ticket(local=False, lease=lease)
        if _text(out[1]) == "rate":
            wait = int(out[2]) / 1000
            raise RateLimited(f"tenant {c.name!r} is over its rate of {c.requests_per_s:g} requests/s "
                              "(all gateways together)", headers={"Retry-After": str(max(1, round(wait)))})
        raise RateLimited(f"tenant {c.name!r} already has {c.max_concurrent} requests in flight "
                          "(all gateways together)", headers={"Retry-After": "1"})

    def release(self, tenant: Any, lease: str | None) -> None:
        """Give the lease back, in the background (the answer is not held for it)."""
        if lease is None:
            return
        task = asyncio.get_running_loop().create_task(self._release(tenant.cfg.name, lease))
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
        now = time.monotonic()
        if now - self.last_warning >= 60.0:
            self.last_warning = now
            log.warning("shared tenant limits unavailable (%s: %s); each gateway applies its own until "
                        "Redis answers again", type(exc).__name__, exc or "timeout")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
