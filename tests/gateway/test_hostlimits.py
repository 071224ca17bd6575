"""Host-wide tenant limits of --workers (gateway/hostlimits.py): two workers' views of one table,
in one process, with a fake clock."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway import hostlimits, limits
from gateway.auth import TenantState
from gateway.config import TenantCfg
from gateway.errors import RateLimited
from gateway.hostlimits import HostLimits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def workers(tmp_path: Path, clock: Clock, n: int = 2) -> list[HostLimits]:
    hostlimits.create(tmp_path / "limits.bin", n)
    return [HostLimits(tmp_path / "limits.bin", i, n, clock) for i in range(n)]


def tenant(**limits: object) -> tuple[TenantState, TenantState]:
    """The same tenant as two workers hold it (each its own TenantState)."""
    cfg = TenantCfg(name="acme", **limits)
    return TenantState(cfg), TenantState(cfg)


async def test_the_rate_is_shared_by_all_workers(tmp_path: Path) -> None:
    clock = Clock()
    w0, w1 = workers(tmp_path, clock)
    t0, t1 = tenant(requests_per_s=1.0, burst=3)
    for w, t in ((w0, t0), (w1, t1), (w0, t0)):
        await limits.admit(w, t, 0.0)
    for w, t in ((w0, t0), (w1, t1)):  # the burst is spent, whichever worker asks
        with pytest.raises(RateLimited, match="all workers of this gateway together"):
            await limits.admit(w, t, 0.0)
    clock.now += 1.0  # one token back
    await limits.admit(w1, t1, 0.0)
    with pytest.raises(RateLimited):
        await limits.admit(w0, t0, 0.0)


async def test_concurrency_counts_every_worker_and_a_restart_frees_its_share(tmp_path: Path) -> None:
    clock = Clock()
    w0, w1 = workers(tmp_path, clock)
    t0, t1 = tenant(max_concurrent=2)
    a = await limits.admit(w0, t0, 0.0)
    await limits.admit(w1, t1, 0.0)
    with pytest.raises(RateLimited, match="2 requests in flight"):
        await limits.admit(w0, t0, 0.0)
    limits.done(w0, t0, a)
    b = await limits.admit(w0, t0, 0.0)  # a slot came back
    with pytest.raises(RateLimited):
        await limits.admit(w1, t1, 0.0)
    await w1.close()
    w1 = HostLimits(tmp_path / "limits.bin", 1, 2, clock)  # worker 1 died with a request in flight
    await limits.admit(w1, t1, 0.0)
    limits.done(w0, t0, b)
    assert not b.local


async def test_tenants_do_not_share_buckets(tmp_path: Path) -> None:
    clock = Clock()
    w0, _ = workers(tmp_path, clock)
    a = TenantState(TenantCfg(name="a", requests_per_s=1.0, burst=1))
    b = TenantState(TenantCfg(name="b", requests_per_s=1.0, burst=1))
    await limits.admit(w0, a, 0.0)
    await limits.admit(w0, b, 0.0)
    with pytest.raises(RateLimited):
        await limits.admit(w0, a, 0.0)


async def test_the_token_budget_is_shared_by_all_workers_and_corrected_by_usage(tmp_path: Path) -> None:
    clock = Clock()
    w0, w1 = workers(tmp_path, clock)
    t0, t1 = tenant(tokens_per_minute=600)
    a = await limits.admit(w0, t0, 0.0, 100)  # charged the prompt's estimate
    assert a.quota.headers()["x-ratelimit-remaining-tokens"] == "500"
    limits.done(w0, t0, a, used=550)  # the pool said 550 (a long answer): 50 left for the host
    with pytest.raises(RateLimited, match="all workers of this gateway together") as exc:
        await limits.admit(w1, t1, 0.0, 100)  # the other worker sees the debt
    assert exc.value.limit == "tokens" and int(exc.value.headers["Retry-After"]) >= 5
    clock.now += 6.0  # 60 tokens back per 6 s at 600/min
    b = await limits.admit(w1, t1, 0.0, 100)
    limits.done(w1, t1, b, used=10)  # gives back 90 of the estimate
    assert (await limits.admit(w0, t0, 0.0, 100)).quota.headers()["x-ratelimit-remaining-tokens"] == "0"
