"""Geolocation on real MaxMind-format databases: known answers, anomalies, the network cache."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import geoip2.database
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch.geoip import embedded_city_db
from swarmwatch.pipeline.binning import H3_BASE_RESOLUTION, cell_for, parent_cell
from swarmwatch.pipeline.geolocate import (
    V6_FLAG,
    DatabaseLookup,
    Geolocator,
    address_key,
    packed_key,
    special_reason,
)
from tests.pipeline_fixtures import KNOWN, addr, write_asn_db, write_city_db


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


@pytest.fixture
def geo(city_db: Path) -> Geolocator:
    g = Geolocator(city_db, metro_of={2643743: 2643743, 5803556: 5809844})
    yield g
    g.close()


@pytest.mark.parametrize("known", KNOWN, ids=[k.address for k in KNOWN])
def test_known_addresses(geo: Geolocator, known: object) -> None:
    place = geo.locate(address_key(addr(known.address)))  # type: ignore[attr-defined]
    assert place.anomaly == known.anomaly  # type: ignore[attr-defined]
    assert place.country == known.country  # type: ignore[attr-defined]
    assert place.geoname_id == known.geoname_id  # type: ignore[attr-defined]
    assert (place.h3_cell is None) == (known.geoname_id is None)  # type: ignore[attr-defined]


def test_place_matches_geoip2_reader(city_db: Path, geo: Geolocator) -> None:
    # The fast path reads the same records the official geoip2 City reader does.
    with geoip2.database.Reader(str(city_db)) as reader:
        for text in ("81.2.69.160", "89.160.20.112", "216.160.83.56", "175.16.199.0"):
            city = reader.city(text)
            place = geo.locate(address_key(addr(text)))
            assert place.geoname_id == city.city.geoname_id
            assert place.country == city.country.iso_code
            lat, lon = city.location.latitude, city.location.longitude
            assert lat is not None and lon is not None
            assert place.h3_cell == cell_for(lat, lon)


def test_london_cell_metro_and_parents(geo: Geolocator) -> None:
    place = geo.locate(address_key(addr("81.2.69.160")))
    assert place.metro_id == 2643743
    assert place.h3_cell is not None
    from h3.api import basic_int as h3i

    assert h3i.get_resolution(place.h3_cell) == H3_BASE_RESOLUTION
    coarse = parent_cell(place.h3_cell, 4)
    assert h3i.get_resolution(coarse) == 4 and h3i.cell_to_parent(place.h3_cell, 4) == coarse
    with pytest.raises(ValueError):
        parent_cell(place.h3_cell, H3_BASE_RESOLUTION + 1)


def test_one_database_lookup_per_network(city_db: Path) -> None:
    geo = Geolocator(city_db, ranges=False)  # the network cache (IPv6's path)
    calls: list[int] = []
    real = geo._local.resolve

    def counting(keys: list[int]) -> list[tuple[int, tuple[object, ...]]]:
        calls.extend(keys)
        return real(keys)  # type: ignore[return-value]

    geo._local.resolve = counting  # type: ignore[method-assign]
    base = int(ipaddress.IPv4Address("24.0.0.0"))
    places = {geo.locate(base + i * 4099) for i in range(200)}  # spread over a /12
    assert len(places) == 1 and next(iter(places)).geoname_id == 4684888
    assert len(calls) == 1  # the other 199 addresses came from the cache
    geo.close()


def test_private_address_inside_a_cached_public_network(geo: Geolocator) -> None:
    # The test database (wrongly) holds 100.0.0.0/8, which contains 100.64.0.0/10.
    assert geo.locate(address_key(addr("100.1.2.3"))).geoname_id == 5128581
    assert geo.locate(address_key(addr("100.64.1.1"))).anomaly == "private"
    assert geo.locate(address_key(addr("100.1.9.9"))).geoname_id == 5128581


def test_asn_database(city_db: Path, tmp_path: Path) -> None:
    geo = Geolocator(city_db, write_asn_db(tmp_path / "asn.mmdb"))
    assert geo.locate(address_key(addr("81.2.69.160"))).asn == 20712
    assert geo.locate(address_key(addr("89.160.20.112"))).asn is None
    geo.close()


def test_refuses_a_database_that_is_not_city(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a City"):
        DatabaseLookup(write_asn_db(tmp_path / "asn.mmdb"))


def test_embedded_geolite2_places_a_real_address() -> None:
    geo = Geolocator(embedded_city_db())
    place = geo.locate(address_key(addr("81.2.69.160")))
    assert place.country == "GB" and place.geoname_id is not None and place.anomaly is None
    assert geo.locate(address_key(addr("127.0.0.1"))).anomaly == "loopback"
    geo.close()


def test_address_keys() -> None:
    assert address_key(addr("::ffff:1.2.3.4")) == address_key(addr("1.2.3.4"))
    assert packed_key(address_key(addr("1.2.3.4"))) == bytes([1, 2, 3, 4])
    v6 = addr("2a02:8108::42")
    assert address_key(v6) > V6_FLAG and packed_key(address_key(v6)) == v6.packed
    assert special_reason(address_key(addr("8.8.8.8"))) is None
    assert special_reason(address_key(addr("2a02:8108::1"))) is None
    assert special_reason(address_key(addr("3fff::1"))) is None  # inside 2000::/3


_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
_BASES = ["24.0.0.0", "81.2.69.128", "100.0.0.0", "1.128.0.0", "2a02:8108::"]


def _offset(base: str, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(int(ipaddress.ip_address(base)) + i)


_near = st.builds(_offset, st.sampled_from(_BASES), st.integers(0, 2**21))


@pytest.mark.parametrize("ranges", [True, False], ids=["range-table", "network-cache"])
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_v4, _v6, _near), min_size=1, max_size=40))
def test_cache_is_transparent(
    city_db: Path, ranges: bool, ips: list[ipaddress.IPv4Address]
) -> None:
    """Whatever the order, a cached answer equals what the database says for that address."""
    geo = Geolocator(city_db, ranges=ranges)
    plain = DatabaseLookup(city_db)
    for ip in ips:
        key = address_key(ip)
        (_, raw) = plain.resolve([key])[0]
        assert geo.locate(key)[:3] == raw[:3]
        assert geo.locate(key)[4] == raw[3]
    geo.close()
    plain.close()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1) | st.integers(0, 2**128 - 1).map(lambda n: n | V6_FLAG))
def test_search_tree_walk_agrees_with_maxminddb(key: int) -> None:
    """Our own walk of the search tree names the same record and network as maxminddb."""
    import maxminddb

    from swarmwatch.pipeline.geolocate import _city_place

    path = embedded_city_db()
    lookup, reader = _walk_fixture(path)
    [(plen, place)] = lookup.resolve([key])
    if special_reason(key) is not None:
        return
    ip = ipaddress.IPv4Address(key) if key < V6_FLAG else ipaddress.IPv6Address(key ^ V6_FLAG)
    assert isinstance(reader, maxminddb.extension.Reader | maxminddb.reader.Reader)
    record, expected_plen = reader.get_with_prefix_len(ip)
    assert (plen, place) == (expected_plen, _city_place(record))


_WALK: dict[Path, tuple[DatabaseLookup, object]] = {}


def _walk_fixture(path: Path) -> tuple[DatabaseLookup, object]:
    import maxminddb

    if path not in _WALK:
        _WALK[path] = (DatabaseLookup(path), maxminddb.open_database(str(path)))
    return _WALK[path]
