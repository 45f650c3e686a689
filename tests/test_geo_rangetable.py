"""The IPv4 range table: the same answers as the tree walk, cached by the database's hash,
and a cache file that holds GeoIP networks only."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch.geoip import embedded_city_db
from swarmwatch.pipeline.geolocate import DatabaseLookup, Geolocator, range_table, special_reason
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.pipeline.rangetable import KEEP_UNUSED_DAYS, RangeTable
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database
from tests.pipeline_fixtures import INFOHASH, KNOWN, T0, addr, register, write_city_db

_EMBEDDED: dict[str, tuple[RangeTable, DatabaseLookup]] = {}


def _embedded() -> tuple[RangeTable, DatabaseLookup]:
    """The embedded GeoLite2 City's table (from the user's cache, built there once)."""
    if "x" not in _EMBEDDED:
        _EMBEDDED["x"] = (range_table(embedded_city_db()), DatabaseLookup(embedded_city_db()))
    return _EMBEDDED["x"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_agrees_with_the_tree_walk_on_geolite2(keys: list[int]) -> None:
    """Every IPv4 address gets the place (and anomaly) DatabaseLookup gives it."""
    table, lookup = _embedded()
    ids = table.place_ids(keys).tolist()
    assert [table.place(i) for i in ids] == [place for _, place in lookup.resolve(keys)]


def test_range_edges_on_geolite2() -> None:
    """Both ends of every range near special-purpose space, and of IPv4 itself."""
    table, lookup = _embedded()
    edges = {0, 2**32 - 1}
    for start in table.starts[:2000].tolist() + table.starts[-2000:].tolist():
        edges.update((start - 1, start, start + 1))
    for net in ("10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "192.168.0.0/16", "224.0.0.0/4"):
        n = ipaddress.ip_network(net)
        lo, hi = int(n.network_address), int(n.broadcast_address)
        edges.update((lo - 1, lo, hi, hi + 1))
    keys = sorted(k for k in edges if 0 <= k < 2**32)
    ids = table.place_ids(keys).tolist()
    assert [table.place(i) for i in ids] == [place for _, place in lookup.resolve(keys)]
    assert table.place(int(table.place_ids([int(ipaddress.IPv4Address("10.1.2.3"))])[0]))[0] == (
        special_reason(int(ipaddress.IPv4Address("10.1.2.3")))
    )


@pytest.mark.parametrize("ip_version", [4, 6])
def test_agrees_on_small_databases(tmp_path: Path, ip_version: int) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    path = tmp_path / "city.mmdb"
    if ip_version == 6:
        write_city_db(path)
    else:
        writer = MMDBWriter(ip_version=4, database_type="GeoIP2-City")
        writer.insert_network(
            IPSet(["81.2.69.0/24"]),
            {"city": {"geoname_id": 2643743}, "country": {"iso_code": "GB"},
             "location": {"latitude": 51.5, "longitude": -0.1}},
        )  # fmt: skip
        writer.insert_network(IPSet(["24.0.0.0/12"]), {"country": {"iso_code": "US"}})
        writer.to_db_file(str(path))
    table = range_table(path, tmp_path / "cache")
    lookup = DatabaseLookup(path)
    keys = [int(ipaddress.IPv4Address(k.address)) for k in KNOWN if ":" not in k.address]
    keys += [0, 2**32 - 1, int(ipaddress.IPv4Address("24.15.255.255")), 0x18100000]
    for start in table.starts.tolist():
        keys += [start, max(0, start - 1)]
    ids = table.place_ids(keys).tolist()
    assert [table.place(i) for i in ids] == [place for _, place in lookup.resolve(keys)]
    lookup.close()


def test_cached_by_the_database_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    city = write_city_db(tmp_path / "city.mmdb")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="swarmwatch.pipeline.rangetable"):
        first = range_table(city, cache)
    [file] = cache.iterdir()
    assert hashlib.sha256(city.read_bytes()).hexdigest() in file.name
    # A build says so before and after (seconds on a real database: not a hang).
    said = [r.getMessage() for r in caplog.records]
    assert (
        said[0]
        == "building the IPv4 range table of city.mmdb (once per GeoIP database, about 10 s)"
    )
    assert said[1].startswith("IPv4 range table built in ") and str(cache) in said[1]
    caplog.clear()

    def no_build(*args: object) -> RangeTable:
        raise AssertionError("built again")

    monkeypatch.setattr(RangeTable, "build", classmethod(no_build))
    with caplog.at_level(logging.INFO, logger="swarmwatch.pipeline.rangetable"):
        again = range_table(city, cache)
    assert caplog.records == []  # read from the cache: nothing to say
    assert (again.starts == first.starts).all() and (again.ids == first.ids).all()
    assert [again.place(i) for i in range(len(again.places))] == [
        first.place(i) for i in range(len(first.places))
    ]
    monkeypatch.undo()
    file.write_bytes(b"not a table")  # a damaged cache file is built again, not trusted
    assert (range_table(city, cache).starts == first.starts).all()
    assert RangeTable.load(file).ids.tolist() == first.ids.tolist()


def test_the_cache_file_holds_no_peer_address(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is a function of the database file alone: ingesting addresses leaves
    the cache directory as it was, byte for byte (the privacy scan of every path,
    tests/test_privacy_paths.py, scans this directory too)."""
    city = write_city_db(tmp_path / "city.mmdb")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    register(db, ("alpha", [INFOHASH]))

    async def ingest() -> None:
        geo = Geolocator(city)
        before = {f: f.read_bytes() for f in cache.rglob("*") if f.is_file()}
        assert len(before) == 1
        async with Pipeline(db, geolocator=geo, batch_size=7) as p:
            for k in KNOWN:
                await p.put(PeerSighting(INFOHASH, addr(k.address), 1, Source.DHT, "v", T0))
        geo.close()
        assert p.stats.stored == len(KNOWN)
        assert {f: f.read_bytes() for f in cache.rglob("*") if f.is_file()} == before

    asyncio.run(ingest())


def test_tables_unused_for_a_month_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, recent = cache / "ipv4-ranges-v0-old.npz", cache / "ipv4-ranges-v1-recent.npz"
    other = cache / "city-networks-x.json.gz"  # not a range table: never touched
    for f in (stale, recent, other):
        f.write_bytes(b"x")
    month_ago = time.time() - (KEEP_UNUSED_DAYS + 1) * 86_400
    os.utime(stale, (month_ago, month_ago))
    os.utime(other, (month_ago, month_ago))
    range_table(write_city_db(tmp_path / "city.mmdb"), cache)  # built and cached: prunes
    assert not stale.exists() and recent.exists() and other.exists()
    assert len(list(cache.glob("ipv4-ranges-v*.npz"))) == 2
