import importlib.util
import json
import math
import os
import random
from collections import Counter

import geoip2.database
import pytest

from loadtest.clients import CITIES, ClientSpecError, parse_clients


def _db_path() -> str:
    spec = importlib.util.find_spec("_maxminddb_geolite2")
    assert spec is not None and spec.origin
    return os.path.join(os.path.dirname(spec.origin), "GeoLite2-City.mmdb")


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0 * math.acos(max(-1.0, min(1.0, c)))


def test_every_builtin_ip_geolocates_to_its_city() -> None:
    with geoip2.database.Reader(_db_path()) as reader:
        for city in CITIES.values():
            for ip in city.ips:
                found = reader.city(ip)
                assert found.country.iso_code == city.country, (city.key, ip)
                km = _km(city.lat, city.lon, found.location.latitude, found.location.longitude)
                assert km < 100, (city.key, ip, km)


def test_weights_are_respected() -> None:
    mix = parse_clients("singapore:3,london:2,virginia:1")
    rng = random.Random(11)
    counts = Counter(mix.pick(rng)[0].key for _ in range(12000))
    assert abs(counts["singapore"] / 12000 - 0.5) < 0.02
    assert abs(counts["london"] / 12000 - 1 / 3) < 0.02
    assert abs(counts["virginia"] / 12000 - 1 / 6) < 0.02
    assert mix.shares() == {"singapore": 0.5, "london": 0.333333, "virginia": 0.166667}


def test_picked_ip_belongs_to_city_and_is_deterministic() -> None:
    mix = parse_clients("tokyo,london")
    a = [mix.pick(random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    for city, ip in (mix.pick(random.Random(i)) for i in range(50)):
        assert ip in city.ips


def test_country_code_spreads_over_its_cities() -> None:
    mix = parse_clients("DE:2,sg:1")
    assert mix.shares() == {"frankfurt": 0.333333, "berlin": 0.333333, "singapore": 0.333333}


def test_spec_from_json_and_yaml_files(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"name": "tokyo", "weight": 2},
                                {"name": "Lab", "ips": ["1.1.1.1"], "lat": -37.7, "lon": 145.2, "country": "au"}]))
    mix = parse_clients(str(path))
    assert [c.key for c in mix.cities] == ["tokyo", "lab"] and mix.cities[1].country == "AU"
    ypath = tmp_path / "c.yaml"
    ypath.write_text("london: 1\nsaopaulo: 3\n")
    assert parse_clients(str(ypath)).shares() == {"london": 0.25, "saopaulo": 0.75}


@pytest.mark.parametrize("spec", ["atlantis:1", "london:0", "london:x", "XX:1", ","])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ClientSpecError):
        parse_clients(spec)
