from __future__ import annotations

import os
from pathlib import Path

import pytest

from routing.locate import ClientLocator, embedded_db_notice, embedded_db_path, open_geoip
from routing.topology import Location
from tests.geoip_fixture import LONDON_IP, SAO_PAULO_IP, SINGAPORE_IP, US_IP, write_test_city_db

GATEWAY = Location(50.11, 8.68, "DE", "EU", "Frankfurt")


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = write_test_city_db(tmp_path_factory.mktemp("geoip") / "city.mmdb")
    r = open_geoip(path)
    yield r
    r.close()


@pytest.fixture
def locator(reader) -> ClientLocator:  # type: ignore[no-untyped-def]
    return ClientLocator(["127.0.0.0/8", "10.0.0.0/8", "::1/128"], reader, GATEWAY)


# --- client_ip: who is the client? ------------------------------------------------------

def test_untrusted_peer_xff_ignored(locator: ClientLocator) -> None:
    assert locator.client_ip("203.0.113.9", "103.4.96.1") == "203.0.113.9"


def test_trusted_peer_uses_rightmost_untrusted_hop(locator: ClientLocator) -> None:
    # the client wrote "1.1.1.1" itself; our proxy 10.0.0.5 appended the real peer 103.4.96.1
    assert locator.client_ip("127.0.0.1", "1.1.1.1, 103.4.96.1, 10.0.0.5") == "103.4.96.1"
    assert locator.client_ip("127.0.0.1", "81.2.69.142") == "81.2.69.142"


def test_all_hops_trusted_gives_leftmost(locator: ClientLocator) -> None:
    assert locator.client_ip("127.0.0.1", "10.1.1.1, 10.0.0.5") == "10.1.1.1"


def test_garbage_hops_skipped(locator: ClientLocator) -> None:
    assert locator.client_ip("127.0.0.1", "8.8.8.8, not-an-ip, , 999.1.1.1") == "8.8.8.8"
    assert locator.client_ip("127.0.0.1", "garbage") == "127.0.0.1"
    assert locator.client_ip("127.0.0.1", ",,,") == "127.0.0.1"


def test_ports_brackets_ipv6_and_mapped(locator: ClientLocator) -> None:
    assert locator.client_ip("127.0.0.1", "81.2.69.142:5555") == "81.2.69.142"
    assert locator.client_ip("::1", '"[2001:db8::7]:443"') == "2001:db8::7"
    assert locator.client_ip("::ffff:127.0.0.1", "8.8.8.8") == "8.8.8.8"  # mapped peer is trusted


def test_no_xff_or_no_peer(locator: ClientLocator) -> None:
    assert locator.client_ip("127.0.0.1", None) == "127.0.0.1"
    assert locator.client_ip(None, "8.8.8.8") is None  # nobody to trust
    assert locator.client_ip("bogus", "8.8.8.8") is None


# --- locate: where is it? ---------------------------------------------------------------

@pytest.mark.parametrize("ip, city, country, continent, lat", [
    (SINGAPORE_IP, "Singapore", "SG", "AS", 1.29),
    (LONDON_IP, "London", "GB", "EU", 51.51),
    (US_IP, "Wichita", "US", "NA", 37.75),
    (SAO_PAULO_IP, "Sao Paulo", "BR", "SA", -23.55),
])
def test_geoip_lookup(locator: ClientLocator, ip: str, city: str, country: str, continent: str,
                      lat: float) -> None:
    loc = locator.locate(ip)
    assert (loc.city, loc.country, loc.continent, loc.source) == (city, country, continent, "geoip")
    assert loc.lat == pytest.approx(lat)


@pytest.mark.parametrize("ip", [None, "", "nonsense", "10.1.2.3", "192.168.1.1", "127.0.0.1", "::1",
                                "169.254.1.1", "9.9.9.9", "2001:4860::8888"])
def test_fallback_for_unknown_private_invalid(locator: ClientLocator, ip: str | None) -> None:
    loc = locator.locate(ip)
    assert loc.source == "fallback"
    assert (loc.lat, loc.lon, loc.country) == (GATEWAY.lat, GATEWAY.lon, "DE")


def test_no_reader_always_falls_back() -> None:
    loc = ClientLocator([], None, GATEWAY).locate(US_IP)
    assert loc.source == "fallback" and loc.lat == GATEWAY.lat


class CountingReader:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.calls = inner, 0

    def city(self, ip: str):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner.city(ip)


def test_lookups_are_cached_and_bounded(reader) -> None:  # type: ignore[no-untyped-def]
    counting = CountingReader(reader)
    loc = ClientLocator([], counting, GATEWAY, cache_size=2)
    for _ in range(3):
        assert loc.locate(SINGAPORE_IP).city == "Singapore"
    assert counting.calls == 1
    loc.locate(LONDON_IP)
    loc.locate(US_IP)  # evicts Singapore (least recently used)
    assert loc.cache_info().currsize == 2
    loc.locate(SINGAPORE_IP)
    assert counting.calls == 4


def test_mapped_ipv6_normalised_before_cache(reader) -> None:  # type: ignore[no-untyped-def]
    counting = CountingReader(reader)
    loc = ClientLocator([], counting, GATEWAY)
    assert loc.locate("::ffff:81.2.69.142").city == "London"
    assert loc.locate(LONDON_IP).city == "London"
    assert counting.calls == 1


def test_reader_errors_fall_back() -> None:
    class Broken:
        def city(self, ip: str) -> None:
            raise ValueError("corrupt")

    assert ClientLocator([], Broken(), GATEWAY).locate(US_IP).source == "fallback"


def test_embedded_database_opens_and_notice() -> None:
    path = embedded_db_path()
    assert Path(path).name == "GeoLite2-City.mmdb" and os.path.getsize(path) > 1_000_000
    r = open_geoip("embedded")
    try:
        loc = ClientLocator([], r, GATEWAY).locate("8.8.8.8")
        assert loc.source == "geoip" and loc.country == "US"
    finally:
        r.close()
    notice = embedded_db_notice()
    assert "2018" in notice and "geoip.database" in notice and "\n" not in notice


# --- defects 7 and 8: the cache keys on the chosen address; every header line counts --------------

def test_the_cache_keys_on_the_chosen_address_not_the_header(locator) -> None:  # type: ignore[no-untyped-def]
    """Unique 8 KB X-Forwarded-For values from an untrusted peer (ignored) cost nothing: one
    entry, for the peer (old: one cached entry per header value)."""
    for i in range(300):
        ip, loc = locator.place("81.2.69.142", f"{i}," + "9" * 8000)
        assert ip == "81.2.69.142" and loc.country == "GB"
    assert locator.cache_info().currsize == 1
    assert not hasattr(locator.place, "cache_info")  # no second cache keyed on the raw header


def test_repeated_header_lines_are_one_list(locator) -> None:  # type: ignore[no-untyped-def]
    # a proxy that adds a line instead of extending it still has the last word (RFC 7230 3.2.2)
    assert locator.client_ip("127.0.0.1", [SINGAPORE_IP, LONDON_IP]) == LONDON_IP
    assert locator.client_ip("127.0.0.1", [f"{SINGAPORE_IP}, 10.0.0.1", "10.0.0.5"]) == SINGAPORE_IP
    assert locator.client_ip("127.0.0.1", []) == "127.0.0.1"


def test_forwarded_for_values_are_the_hops(locator) -> None:  # type: ignore[no-untyped-def]
    lines = [f'for="{SINGAPORE_IP}:4711";proto=http;by=10.0.0.9', f"For={LONDON_IP}, for=\"[::1]\""]
    assert locator.client_ip("127.0.0.1", lines, forwarded=True) == LONDON_IP
    assert locator.client_ip("127.0.0.1", ["for=_hidden, for=unknown"], forwarded=True) == "127.0.0.1"
    assert locator.client_ip("8.8.8.8", [f"for={LONDON_IP}"], forwarded=True) == "8.8.8.8"  # untrusted peer


def test_a_request_without_a_forwarding_header_is_placed_by_its_peer_once(reader) -> None:  # type: ignore[no-untyped-def]
    """Placing by the peer alone is cached by its text (the per-request cost), with the same
    answer as the uncached path; a forwarding header still goes through client_ip."""
    loc = ClientLocator(["127.0.0.0/8"], reader, GATEWAY, cache_size=2)
    for peer in (LONDON_IP, f"::ffff:{LONDON_IP}", "10.0.0.1", None, "not an ip"):
        want = (loc.client_ip(peer, None), loc.locate(loc.client_ip(peer, None)))
        assert loc.place(peer, ()) == want and loc.place(peer, None) == want
    assert loc.place(LONDON_IP, ())[1].city == "London"
    assert loc.place("127.0.0.1", (SINGAPORE_IP,)) == (SINGAPORE_IP, loc.locate(SINGAPORE_IP))
    assert loc._by_peer.cache_info().currsize == 2  # bounded by cache_size
