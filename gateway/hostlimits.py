"""Tenant limits for all the workers of one host (``--workers N`` without ``auth.shared``).

Each worker deciding alone would let a tenant through N times over; a fixed share each (rate/N)
would refuse a client whose one keep-alive connection the kernel pinned to a single worker.  So
the workers share one small table in a file of the run directory, mapped into each of them:
per tenant a request bucket (``tokens``, ``refilled``, on CLOCK_MONOTONIC, which every process of
the host reads alike), the ``tokens_per_minute`` budget (``budget``, ``budget_at``; charged the
prompt's estimate at admission, corrected when the request ends) and one in-flight count per worker.  Every admission takes an exclusive
``flock`` on the file for a few microseconds (never across an await).  A worker that dies holds
no lock (the kernel drops it) and its replacement zeroes its own in-flight counts at start.
With ``auth.shared`` (Redis) the fleet-wide limits apply instead, as without --workers."""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import RateLimited
from gateway.limits import Ticket, _over_budget, admit_local
from gateway.quota import Bucket, Quota

SLOTS = 1024
_HEAD = struct.Struct("<Qdddd")  # tenant key (0: free), tokens, refilled, token budget, budget refilled
_COUNT = struct.Struct("<i")
_HELD = "inflight"  # the lease of a request counted in flight


def slot_size(workers: int) -> int:
    return (_HEAD.size + _COUNT.size * workers + 7) // 8 * 8


def create(path: Path, workers: int) -> None:
    """The empty table (the supervisor makes it before starting workers)."""
    with open(path, "wb") as f:
        f.truncate(SLOTS * slot_size(workers))


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") | 1


class HostLimits:
    """Worker ``index``'s view of the host table; the interface of ``limits.SharedLimits``."""

    def __init__(self, path: str | Path, index: int, workers: int,
                 clock: Callable[[], float]) -> None:
        self.index, self.workers, self.clock = index, workers, clock
        self.size = slot_size(workers)
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, SLOTS * self.size)
        self.slots: dict[str, int] = {}
        with self._locked():
            for slot in range(SLOTS):  # requests of this worker's predecessor died with it
                _COUNT.pack_into(self.map, self._count_at(slot, index), 0)

    def _locked(self) -> Any:
        return _Flock(self.fd)

    def _count_at(self, slot: int, worker: int) -> int:
        return slot * self.size + _HEAD.size + _COUNT.size * worker

    def _slot(self, name: str, now: float, burst: int, tpm: int | None) -> int | None:
        """The tenant's slot (claimed, with full buckets, on first use); None when full.  Lock held."""
        slot = self.slots.get(name)
        if slot is not None:
            return slot
        key = _key(name)
        start = key % SLOTS
        for step in range(SLOTS):
            slot = (start + step) % SLOTS
            found = _HEAD.unpack_from(self.map, slot * self.size)[0]
            if found == 0:
                _HEAD.pack_into(self.map, slot * self.size, key, float(burst), now, float(tpm or 0), now)
            if found in (0, key):
                self.slots[name] = slot
                return slot
        return None

    async def admit(self, tenant: Any, now: float, estimate: int = 1) -> Ticket:
        c = tenant.cfg
        with self._locked():
            t = self.clock()
            slot = self._slot(c.name, t, c.burst, c.tokens_per_minute)
            if slot is None:  # more tenants than slots: this worker's own limits decide
                return admit_local(tenant, now, estimate)
            q = self._take(slot, c, t, estimate)
            if c.max_concurrent is None:
                return Ticket(local=False, estimate=estimate, quota=q)
            counts = [_COUNT.unpack_from(self.map, self._count_at(slot, w))[0] for w in range(self.workers)]
            if sum(counts) >= c.max_concurrent:
                raise RateLimited(f"tenant {c.name!r} already has {c.max_concurrent} requests in flight "
                                  "(all workers of this gateway together)", headers={"Retry-After": "1"})
            _COUNT.pack_into(self.map, self._count_at(slot, self.index), counts[self.index] + 1)
        return Ticket(local=False, lease=_HELD, estimate=estimate, quota=q)

    def _take(self, slot: int, c: Any, t: float, estimate: int) -> Quota:
        """Take one request and the prompt's estimate from the tenant's buckets, or raise."""
        key, tokens, refilled, budget, budget_at = _HEAD.unpack_from(self.map, slot * self.size)
        if c.requests_per_s is not None:
            tokens = min(float(c.burst), tokens + max(0.0, t - refilled) * c.requests_per_s)
        tpm = c.tokens_per_minute
        if tpm is not None:
            budget = min(float(tpm), budget + max(0.0, t - budget_at) * tpm / 60.0)
        q = _quota(c, tokens, budget)
        if tpm is not None and budget < min(estimate, tpm):
            raise _over_budget(c, q, min(estimate, tpm) - budget, " (all workers of this gateway together)")
        if c.requests_per_s is not None and tokens < 1.0:
            _HEAD.pack_into(self.map, slot * self.size, key, tokens, t, budget, t)
            wait = (1.0 - tokens) / c.requests_per_s
            raise RateLimited(f"tenant {c.name!r} is over its rate of {c.requests_per_s:g} requests/s "
                              "(all workers of this gateway together)",
                              headers={"Retry-After": str(max(1, round(wait))), **q.headers()})
        tokens -= 1.0 if c.requests_per_s is not None else 0.0
        budget -= estimate if tpm is not None else 0.0
        _HEAD.pack_into(self.map, slot * self.size, key, tokens, t, budget, t)
        return _quota(c, tokens, budget)

    def charge(self, tenant: Any, delta: int) -> None:
        """Correct the host's token budget by what the request really used (``delta`` tokens)."""
        slot, tpm = self.slots.get(tenant.cfg.name), tenant.cfg.tokens_per_minute
        if slot is None or tpm is None:
            return
        with self._locked():
            key, tokens, refilled, budget, budget_at = _HEAD.unpack_from(self.map, slot * self.size)
            _HEAD.pack_into(self.map, slot * self.size, key, tokens, refilled, min(float(tpm), budget - delta),
                            budget_at)

    def release(self, tenant: Any, lease: str | None) -> None:
        slot = self.slots.get(tenant.cfg.name)
        if lease is None or slot is None:
            return
        with self._locked():
            at = self._count_at(slot, self.index)
            _COUNT.pack_into(self.map, at, max(0, _COUNT.unpack_from(self.map, at)[0] - 1))

    async def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _quota(c: Any, tokens: float, budget: float) -> Quota:
    tpm = c.tokens_per_minute
    return Quota(Bucket(c.burst, tokens, c.requests_per_s) if c.requests_per_s is not None else None,
                 Bucket(tpm, budget, tpm / 60.0) if tpm is not None else None)


class _Flock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
