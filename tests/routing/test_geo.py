from __future__ import annotations

import pytest

from routing.geo import haversine_km, geo_ms
from routing.plan import RoutingParams
from routing.topology import Location

LONDON = Location(51.5074, -0.1278)
PARIS = Location(48.8566, 2.3522)
NEW_YORK = Location(40.7128, -74.0060)
SINGAPORE = Location(1.3521, 103.8198)


def test_haversine_known_distances() -> None:
    assert haversine_km(LONDON, PARIS) == pytest.approx(344, rel=0.01)
    assert haversine_km(LONDON, NEW_YORK) == pytest.approx(5570, rel=0.01)
    assert haversine_km(LONDON, SINGAPORE) == pytest.approx(10870, rel=0.01)


def test_haversine_symmetric_and_zero() -> None:
    assert haversine_km(LONDON, LONDON) == 0.0
    assert haversine_km(NEW_YORK, SINGAPORE) == pytest.approx(haversine_km(SINGAPORE, NEW_YORK))


def test_haversine_antipodes_and_dateline() -> None:
    assert haversine_km(Location(0, 0), Location(0, 180)) == pytest.approx(20015, rel=0.001)
    # crossing the antimeridian is short, not half the planet
    assert haversine_km(Location(0, 179.5), Location(0, -179.5)) == pytest.approx(111.2, rel=0.01)


def test_geo_ms_is_base_plus_distance_cost() -> None:
    params = RoutingParams(geo_base_ms=5.0, geo_ms_per_1000km=10.0)
    assert geo_ms(LONDON, LONDON, params) == 5.0
    assert geo_ms(LONDON, NEW_YORK, params) == pytest.approx(5.0 + 55.7, rel=0.01)
    steeper = RoutingParams(geo_base_ms=0.0, geo_ms_per_1000km=20.0)
    assert geo_ms(LONDON, NEW_YORK, steeper) == pytest.approx(2 * 55.7, rel=0.01)
