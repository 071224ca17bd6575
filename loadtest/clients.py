"""Synthetic client locations: a built-in table of cities, each with public IPs that the
GeoLite2 City database shipped with ``maxminddb-geolite2`` places there, and weighted specs.

A request from a synthetic client carries one of its city's IPs in ``X-Forwarded-For``, so a
gateway that trusts the load generator as a proxy geolocates it like a real client there.

Spec forms for ``--clients``:

* ``singapore:3,london:2,virginia:1`` — city keys with weights (weight defaults to 1);
* ``JP:2,US:1`` — an ISO country code spreads its weight over the built-in cities of that country;
* a path to a ``.json``/``.yaml`` file holding either such a mapping (``{"tokyo": 2}``) or a list of
  ``{"name", "weight", "ips", "lat", "lon", "country"}`` entries for locations not in the table.
"""
from __future__ import annotations

import json
import os
import random
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

import yaml


@dataclass(frozen=True)
class City:
    key: str
    name: str
    country: str
    lat: float
    lon: float
    ips: tuple[str, ...]


# IPs checked against the embedded GeoLite2-City database (tests/loadtest/test_clients.py).
CITIES: dict[str, City] = {c.key: c for c in (
    City("singapore", "Singapore", "SG", 1.29, 103.85, ("165.21.0.1", "103.4.96.1")),
    City("tokyo", "Tokyo", "JP", 35.68, 139.75, ("210.138.184.59", "1.0.16.1", "27.0.0.1")),
    City("seoul", "Seoul", "KR", 37.51, 126.97, ("124.0.0.1",)),
    City("beijing", "Beijing", "CN", 39.93, 116.39, ("220.181.38.148",)),
    City("sydney", "Sydney", "AU", -33.87, 151.20, ("203.2.218.214",)),
    City("johannesburg", "Johannesburg", "ZA", -26.23, 28.06, ("196.25.1.1", "154.0.0.1", "105.0.0.1")),
    City("london", "London", "GB", 51.53, -0.23, ("81.2.69.142", "81.2.69.160", "212.58.244.20")),
    City("dublin", "Dublin", "IE", 53.35, -6.24, ("31.13.64.1",)),
    City("paris", "Paris", "FR", 48.86, 2.34, ("80.67.169.12", "62.210.16.6")),
    City("amsterdam", "Amsterdam", "NL", 52.37, 4.90, ("193.0.0.1", "91.198.174.192")),
    City("frankfurt", "Frankfurt", "DE", 50.12, 8.68, ("212.0.0.1",)),
    City("berlin", "Berlin", "DE", 52.52, 13.40, ("85.214.132.117",)),
    City("stockholm", "Stockholm", "SE", 59.33, 18.05, ("89.160.20.112",)),
    City("helsinki", "Helsinki", "FI", 60.17, 24.94, ("95.216.0.1",)),
    City("madrid", "Madrid", "ES", 40.42, -3.68, ("213.0.0.1",)),
    City("virginia", "Ashburn, Virginia", "US", 39.02, -77.54, ("152.195.0.1", "103.21.244.1")),
    City("newyork", "New York", "US", 40.76, -73.99, ("72.229.28.185", "24.0.0.1")),
    City("california", "San Francisco Bay Area", "US", 37.77, -122.39,
         ("208.67.222.222", "104.244.42.1", "151.101.1.1", "173.194.0.1")),
    City("saopaulo", "Sao Paulo", "BR", -23.57, -46.64, ("177.71.128.1", "201.0.0.1")),
    City("medellin", "Medellin", "CO", 6.25, -75.56, ("190.0.0.1",)),
)}

DEFAULT_SPEC = "virginia:1"


class ClientSpecError(ValueError):
    """A ``--clients`` spec that cannot be used; the message names the part and why."""


@dataclass(frozen=True)
class ClientMix:
    """Locations with weights; ``pick`` draws one location and one of its IPs."""

    cities: tuple[City, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cum", tuple(accumulate(self.weights)))

    def pick(self, rng: random.Random) -> tuple[City, str]:
        cum: tuple[float, ...] = self._cum  # type: ignore[attr-defined]
        city = self.cities[bisect_right(cum, rng.random() * cum[-1])]
        return city, city.ips[rng.randrange(len(city.ips))]

    def shares(self) -> dict[str, float]:
        total = sum(self.weights)
        return {c.key: round(w / total, 6) for c, w in zip(self.cities, self.weights)}


def parse_clients(spec: str | None) -> ClientMix:
    """Parse a ``--clients`` spec (inline list or file path) into a :class:`ClientMix`."""
    spec = (spec or DEFAULT_SPEC).strip()
    if os.path.isfile(spec):
        entries = _entries_from_file(spec)
    else:
        entries = [_inline_entry(part) for part in spec.split(",") if part.strip()]
    merged: dict[str, tuple[City, float]] = {}
    for city, weight in (pair for entry in entries for pair in _expand(entry)):
        old = merged.get(city.key)
        merged[city.key] = (city, weight + (old[1] if old else 0.0))
    if not merged:
        raise ClientSpecError(f"{spec!r}: no client locations")
    cities, weights = zip(*merged.values())
    return ClientMix(tuple(cities), tuple(weights))


def _inline_entry(part: str) -> tuple[str | City, float]:
    name, _, weight = part.strip().partition(":")
    return name.strip(), _weight(weight or "1", part)


def _weight(text: object, where: object) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ClientSpecError(f"{where!r}: weight {text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ClientSpecError(f"{where!r}: weight must be a positive number")
    return value


def _expand(entry: tuple[str | City, float]) -> list[tuple[City, float]]:
    name, weight = entry
    if isinstance(name, City):
        return [(name, weight)]
    if name.lower() in CITIES:
        return [(CITIES[name.lower()], weight)]
    in_country = [c for c in CITIES.values() if c.country == name.upper()] if len(name) == 2 else []
    if not in_country:
        known = ", ".join(sorted(CITIES))
        raise ClientSpecError(f"{name!r}: not a built-in city or country code (cities: {known})")
    return [(c, weight / len(in_country)) for c in in_country]


def _entries_from_file(path: str) -> list[tuple[str | City, float]]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh) if path.endswith(".json") else yaml.safe_load(fh)
    if isinstance(data, dict):
        return [(str(k), _weight(v, f"{path}: {k}")) for k, v in data.items()]
    if isinstance(data, list):
        return [_file_item(item, f"{path}[{i}]") for i, item in enumerate(data)]
    raise ClientSpecError(f"{path}: expected a mapping of name to weight or a list of locations")


def _file_item(item: object, where: str) -> tuple[str | City, float]:
    if not isinstance(item, dict) or "name" not in item:
        raise ClientSpecError(f"{where}: each entry needs at least a 'name'")
    weight = _weight(item.get("weight", 1), where)
    if "ips" not in item:
        return str(item["name"]), weight
    ips = item["ips"] if isinstance(item["ips"], list) else [item["ips"]]
    if not ips:
        raise ClientSpecError(f"{where}: 'ips' is empty")
    name = str(item["name"])
    city = City(name.lower(), name, str(item.get("country", "")).upper(),
                float(item.get("lat", 0.0)), float(item.get("lon", 0.0)), tuple(str(ip) for ip in ips))
    return city, weight
