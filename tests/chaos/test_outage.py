"""A region dies under load, and everything is down with a small retry budget."""
from __future__ import annotations

from tests.chaos import scenarios as sc
from tests.chaos.helpers import Env


async def test_regional_outage_under_load_loses_nothing(env: Env) -> None:
    await sc.regional_outage(env)


async def test_total_outage_is_bounded_by_the_retry_budget(env: Env) -> None:
    await sc.retry_budget(env)
