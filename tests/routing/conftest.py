"""Fixtures for the routing tests (helpers live in tests/routing/helpers.py)."""
from __future__ import annotations

import pytest

from routing.topology import Topology
from tests.routing.helpers import FakeClock, make_topology


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def topology() -> Topology:
    return make_topology()
