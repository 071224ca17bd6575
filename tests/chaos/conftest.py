"""The chaos suite's fixture: an :class:`~tests.chaos.helpers.Env` per test."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.chaos.helpers import Env


@pytest.fixture
async def env(geoip_reader: Any) -> AsyncIterator[Env]:
    e = Env(geoip_reader)
    yield e
    await e.close()
