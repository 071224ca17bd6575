"""Fixtures shared by the simulator's tests: a simulator with no delays, and an HTTP session."""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from worker.sim import Simulator
from worker.sim.testing import running_sim


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_sim(ttft_ms=0, itl_ms=0) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s
