"""Where is the client?  The trusted hop of X-Forwarded-For (or RFC 7239 Forwarded), then a
GeoIP City lookup.

Only a connecting peer inside ``trusted_networks`` may speak for the client through
X-Forwarded-For; the client is then the right-most hop that is not itself trusted (hops to
the left of it were written by the client and prove nothing).  Several header lines are one
list, in order (RFC 7230 section 3.2.2): a proxy that adds a line instead of extending one
still has the last word.  The cache is keyed on the address chosen, never on the header.  Addresses that GeoIP cannot
place (private, loopback, reserved, invalid, not in the database) fall back to the gateway's
configured location, marked ``source="fallback"``.
"""
from __future__ import annotations

import functools
import importlib.util
import ipaddress
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from routing.topology import Location

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EMBEDDED = "embedded"


class CityReader(Protocol):
    def city(self, ip: str) -> Any: ...


def parse_ip(text: str | None) -> IPAddress | None:
    """An address from a peer or an X-Forwarded-For entry; tolerates ports, brackets and
    quotes ("1.2.3.4:80", "[2001:db8::1]:443", '"::1"'); anything else gives None."""
    if not text:
        return None
    s = text.strip().strip('"').strip()
    if s.startswith("["):
        s = s[1:].split("]", 1)[0]
    elif s.count(":") == 1:  # IPv4 with a port; bare IPv6 has two or more colons
        s = s.split(":", 1)[0]
    s = s.split("%", 1)[0]  # zone index
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ClientLocator:
    """Resolves the client address of a request and places it on the map (cached)."""

    def __init__(self, trusted_networks: Sequence[str], reader: CityReader | None,
                 fallback: Location, cache_size: int = 65536) -> None:
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_networks)
        self._reader = reader
        self._fallback = Location(fallback.lat, fallback.lon, fallback.country, fallback.continent,
                                  fallback.city, source="fallback")
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup)
        # a request with no forwarding header is placed by its peer alone: cached by the peer's
        # text (parsing it and is_global cost more than the rest of placing it)
        self._by_peer = functools.lru_cache(maxsize=cache_size)(self._place_peer)

    @property
    def fallback(self) -> Location:
        return self._fallback

    def is_trusted(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self._trusted)

    def client_ip(self, peer: str | None, xff: str | Iterable[str] | None, forwarded: bool = False) -> str | None:
        """The client's address: the peer itself unless it is a trusted proxy, in which case
        the right-most untrusted hop of X-Forwarded-For (unparsable hops are skipped).  ``xff``
        is the header's value or all its lines; with ``forwarded`` they are RFC 7239
        ``Forwarded`` lines, whose ``for=`` parameters are the hops."""
        peer_ip = parse_ip(peer)
        if peer_ip is None:
            return None
        if not xff or not self.is_trusted(peer_ip):
            return str(peer_ip)
        lines = [xff] if isinstance(xff, str) else list(xff)
        hops = forwarded_for(lines) if forwarded else [h for line in lines for h in line.split(",")]
        leftmost: IPAddress | None = None
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:
                continue
            if not self.is_trusted(ip):
                return str(ip)
            leftmost = ip
        # every hop is trusted: the request came from inside; the farthest hop is the client
        return str(leftmost if leftmost is not None else peer_ip)

    def place(self, peer: str | None, xff: str | Iterable[str] | None,
              forwarded: bool = False) -> tuple[str | None, Location]:
        """(client IP, its location) for a request from ``peer`` carrying ``xff`` (see
        ``client_ip``); the location is cached by the address chosen."""
        if not xff:
            return self._by_peer(peer)
        ip = self.client_ip(peer, xff, forwarded)
        return ip, self.locate(ip)

    def _place_peer(self, peer: str | None) -> tuple[str | None, Location]:
        ip = self.client_ip(peer, None)
        return ip, self.locate(ip)

    def locate(self, ip: str | None) -> Location:
        """Location of ``ip`` from GeoIP, or the fallback (gateway's own location)."""
        parsed = parse_ip(ip)
        if parsed is None or not parsed.is_global or self._reader is None:
            return self._fallback
        return self._cached(str(parsed))

    def cache_info(self) -> functools._CacheInfo:
        return self._cached.cache_info()

    def _lookup(self, ip: str) -> Location:
        try:
            rec = self._reader.city(ip)  # type: ignore[union-attr]
        except (RuntimeError, ValueError, LookupError):  # AddressNotFoundError, InvalidDatabaseError
            return self._fallback
        country = rec.country.iso_code
        continent = rec.continent.code
        lat, lon = rec.location.latitude, rec.location.longitude
        if lat is None or lon is None:  # country-level record: keep what is known
            fb = self._fallback
            return Location(fb.lat, fb.lon, country or fb.country, continent or fb.continent,
                            fb.city, source="fallback")
        return Location(float(lat), float(lon), country, continent, rec.city.name, source="geoip")


def forwarded_for(lines: Iterable[str]) -> list[str]:
    """The ``for=`` values of RFC 7239 ``Forwarded`` header lines, in order (quotes removed;
    obfuscated identifiers such as ``_hidden`` or ``unknown`` are kept and later skipped)."""
    hops = []
    for line in lines:
        for element in line.split(","):
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    hops.append(value.strip().strip('"'))
    return hops


def embedded_db_path() -> str:
    """Path of GeoLite2-City.mmdb as shipped by the PyPI package ``maxminddb-geolite2``."""
    spec = importlib.util.find_spec("_maxminddb_geolite2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded GeoIP database needs the package maxminddb-geolite2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "GeoLite2-City.mmdb")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return path


def embedded_db_notice() -> str:
    return ("GeoIP: using the embedded GeoLite2-City database from maxminddb-geolite2 (dated 2018); "
            "point geoip.database at a current GeoLite2/GeoIP2 City file for accurate locations")


def geoip_build_time(reader: object) -> float | None:
    """When the database was built (Unix seconds, from its metadata), or None if unknown."""
    try:
        return float(reader.metadata().build_epoch)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a stand-in reader without metadata
        return None


def open_geoip(path: str) -> CityReader:
    """A ``geoip2.database.Reader`` for ``path``, or for the embedded DB when path is "embedded"."""
    import geoip2.database
    import maxminddb

    real = embedded_db_path() if path == EMBEDDED else path
    return geoip2.database.Reader(real, mode=maxminddb.MODE_AUTO)
