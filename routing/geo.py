"""Great-circle distance and its conversion into milliseconds of expected network time."""
from __future__ import annotations

import math

from routing.plan import RoutingParams
from routing.topology import Location

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)


def haversine_km(a: Location, b: Location) -> float:
    """Great-circle distance between two points, in kilometres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def geo_ms(a: Location, b: Location, params: RoutingParams) -> float:
    """The distance prior: a fixed base plus a cost per 1000 km of great-circle distance."""
    return params.geo_base_ms + params.geo_ms_per_1000km * haversine_km(a, b) / 1000.0
