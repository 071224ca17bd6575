"""A tiny GeoIP2-City database for tests, written with mmdb-writer (shared by routing and
gateway tests): four networks in four places, everything else unknown."""
from __future__ import annotations

import os

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# network -> (lat, lon, country, continent, city)
TEST_NETWORKS: dict[str, tuple[float, float, str, str, str]] = {
    "103.4.96.0/24": (1.29, 103.85, "SG", "AS", "Singapore"),
    "81.2.69.0/24": (51.51, -0.13, "GB", "EU", "London"),
    "8.8.8.0/24": (37.75, -97.82, "US", "NA", "Wichita"),
    "200.1.1.0/24": (-23.55, -46.63, "BR", "SA", "Sao Paulo"),
}

SINGAPORE_IP = "103.4.96.1"
LONDON_IP = "81.2.69.142"
US_IP = "8.8.8.8"
SAO_PAULO_IP = "200.1.1.7"


def write_test_city_db(path: str | os.PathLike[str]) -> str:
    """Write the test City database to ``path`` and return the path as a string."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                        languages=["en"], description="infercdn test City database")
    for network, (lat, lon, country, continent, city) in TEST_NETWORKS.items():
        writer.insert_network(IPSet([network]), {
            "location": {"latitude": lat, "longitude": lon},
            "country": {"iso_code": country},
            "continent": {"code": continent},
            "city": {"names": {"en": city}},
        })
    writer.to_db_file(str(path))
    return str(path)
