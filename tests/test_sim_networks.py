"""The city network index: our own search-tree walk agrees with maxminddb's reader.

The fixture databases come from mmdb-writer with every record size the MaxMind DB
spec allows (24, 28, 32 bits) and both IP versions; maxminddb's own iterator is
the reference. The last test builds the index of the real embedded GeoLite2 City
and checks that simulated peers drawn from it geolocate to their cities.
"""

from __future__ import annotations

import ipaddress
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import maxminddb
import pytest

from swarmwatch.sim import networks
from swarmwatch.sim.networks import MAX_NETWORKS_PER_CITY, build_index, load_index
from tests.test_sim_citydb import CITIES, CITYLESS

#: A city owning many separate blocks, so that only a sample of them is kept.
MANY_ID, MANY_V4, MANY_V6 = (
    2950159,  # Berlin
    [f"85.{i}.{j}.0/24" for i in range(176, 180) for j in range(0, 40, 2)],  # 80 blocks
    [f"2a02:8100:{i:x}::/48" for i in range(0, 40, 2)],  # 20 blocks
)
#: A city that exists only in IPv6 (a v6-only database keeps just this one).
V6_ONLY: tuple[int, str, str, list[str], list[str]] = (
    2988507,
    "FR",
    "Europe/Paris",
    [],
    ["2a01:e00::/26"],
)


def write_db(
    path: Path,
    *,
    ip_version: int = 6,
    record_size: int | None = None,
    pad: int = 600_000,
    inline: bool = False,
) -> Path:
    """A City database with CITIES, MANY_ID and V6_ONLY; record_size forces the tree layout.

    A cityless record of `pad` bytes at the lowest address is written first, so
    the others sit beyond it: past 526,336 bytes, pointers take their 3-byte form;
    past 2**24, a 28-bit record needs its shared nibble. mmdb-writer stores every
    key and value once, behind pointers; inline writes each record's inside in
    place (maps, arrays, booleans, doubles, as MaxMind does with "location").
    """
    import mmdb_writer
    from netaddr import IPSet

    def record(gid: int, cc: str, tz: str, city_first: bool) -> dict[str, object]:
        rec: dict[str, object] = {
            "continent": {"code": "EU", "names": {"en": "Europe " * 50}},  # > 284 bytes
            "location": {"latitude": 1.5, "longitude": -2.5, "time_zone": tz},
            "subdivisions": [{"iso_code": "A"}, {"geoname_id": gid, "flag": True}],
            "country": {"iso_code": cc, "names": {"en": cc}},
        }
        city = {"geoname_id": gid, "names": {"en": str(gid), "de": "x" * 40}}
        # MaxMind's files put "city" first (the fast path); others need not.
        return {"city": city, **rec} if city_first else {**rec, "city": city}

    v6 = ip_version == 6
    cities = [*CITIES, (MANY_ID, "DE", "Europe/Berlin", MANY_V4, MANY_V6), V6_ONLY]
    writer = mmdb_writer.MMDBWriter(
        ip_version=ip_version, database_type="GeoIP2-City", ipv4_compatible=v6
    )
    for i, (gid, cc, tz, v4_blocks, v6_blocks) in enumerate(cities):
        blocks = v4_blocks + v6_blocks if v6 else v4_blocks
        if blocks:
            writer.insert_network(IPSet(blocks), record(gid, cc, tz, i % 2 == 0))
    writer.insert_network(IPSet([CITYLESS]), {"country": {"iso_code": "US"}})
    # In records of under 2 MiB: maxminddb refuses to decode more per record.
    chunk = 1_900_000
    for i in range(-(-pad // chunk)):
        size = min(chunk, pad - i * chunk)
        writer.insert_network(IPSet([f"1.0.{i}.0/24"]), {"pad": chr(65 + i) * size})
    original = mmdb_writer.TreeWriter._adjust_record_size

    def forced(self: mmdb_writer.TreeWriter) -> None:
        original(self)
        if record_size is not None:
            self.record_size = record_size
            self.data_offset = record_size * 2 / 8 * self._node_counter

    class InlineEncoder(mmdb_writer.Encoder):
        def encode(self, value: Any, type_id: Any = None, return_offset: bool = False) -> Any:
            if return_offset:  # a whole record: stored once, the tree points at it
                return super().encode(value, type_id, return_offset=True)
            cache, self.cache = self.cache, False
            try:
                return super().encode(value, type_id)
            finally:
                self.cache = cache

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmdb_writer.TreeWriter, "_adjust_record_size", forced)
        if inline:
            mp.setattr(mmdb_writer.TreeWriter, "encoder_cls", InlineEncoder)
        writer.to_db_file(str(path))
    return path


def reference(db: Path) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """(geoname id, address bits) -> every network maxminddb's iterator places there."""
    out: dict[tuple[int, int], set[tuple[int, int]]] = defaultdict(set)
    with maxminddb.open_database(str(db)) as reader:
        for net, rec in reader:
            if isinstance(rec, dict) and isinstance(rec.get("city"), dict):
                bits = 32 if net.version == 4 else 128
                out[rec["city"]["geoname_id"], bits].add((int(net.network_address), net.prefixlen))
    return out


LAYOUTS = [
    (6, 24, 0, False),
    (6, 24, 600_000, True),
    (6, 28, 17_000_000, False),
    (6, 32, 0, False),
    (4, 24, 600_000, False),
    (4, 28, 17_000_000, True),
]


@pytest.mark.parametrize(("ip_version", "record_size", "pad", "inline"), LAYOUTS)
def test_index_agrees_with_maxminddb(
    tmp_path: Path, ip_version: int, record_size: int, pad: int, inline: bool
) -> None:
    db = write_db(
        tmp_path / "city.mmdb",
        ip_version=ip_version,
        record_size=record_size,
        pad=pad,
        inline=inline,
    )
    with maxminddb.open_database(str(db)) as reader:
        assert reader.metadata().record_size == record_size
    truth = reference(db)
    index = build_index(db)
    assert set(index.cities) == {gid for gid, _ in truth}
    declared = {gid: (cc, tz) for gid, cc, tz, _, _ in CITIES + [V6_ONLY]}
    declared[MANY_ID] = ("DE", "Europe/Berlin")
    for gid, entry in index.cities.items():
        assert (entry.country, entry.time_zone) == declared[gid]
        for bits, blocks, seen in ((32, entry.v4, entry.seen_v4), (128, entry.v6, entry.seen_v6)):
            nets = truth.get((gid, bits), set())
            assert seen == len(nets)
            assert len(blocks) == min(len(nets), MAX_NETWORKS_PER_CITY)
            assert len(set(blocks)) == len(blocks)
            assert set(blocks) <= nets  # exact networks of that city, never the cityless one
    many = index.cities[MANY_ID]
    assert many.seen_v4 == 80 and len(many.v4) == MAX_NETWORKS_PER_CITY
    if ip_version == 6:
        assert many.seen_v6 == 20 and len(many.v6) == MAX_NETWORKS_PER_CITY
        assert index.cities[V6_ONLY[0]].v6 and not index.cities[V6_ONLY[0]].v4
    else:
        assert V6_ONLY[0] not in index.cities


def test_seed_keep_and_progress(tmp_path: Path) -> None:
    db = write_db(tmp_path / "city.mmdb")
    a, b, c = build_index(db, seed=1), build_index(db, seed=1), build_index(db, seed=2)
    assert a.to_json() == b.to_json()
    assert a.cities[MANY_ID].v4 != c.cities[MANY_ID].v4  # 8 of 80: a repeat is ~1e-11
    # Every block of a many-block city turns up across seeds: the sample is not biased
    # towards one end of the tree.
    drawn = {blk for s in range(40) for blk in build_index(db, seed=s).cities[MANY_ID].v4}
    assert len(drawn) > 70

    kept = build_index(db, keep={MANY_ID, 2643743})
    assert set(kept.cities) == {MANY_ID, 2643743}
    assert kept.cities[MANY_ID].seen_v4 == 80

    calls: list[int] = []
    build_index(db, progress=calls.append)
    assert calls == sorted(calls)
    with maxminddb.open_database(str(db)) as reader:
        assert calls[-1] == sum(1 for _ in reader)  # all of them: v4, 2000::/3, cityless


def test_load_index_caches_by_file_and_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = write_db(tmp_path / "city.mmdb")
    cache = tmp_path / "cache"
    built: list[Path] = []
    real_build = networks.build_index

    def counting(path: Path, **kw: object) -> networks.CityNetworkIndex:
        built.append(path)
        return real_build(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(networks, "build_index", counting)
    first = load_index(db, cache_dir=cache)
    again = load_index(db, cache_dir=cache)
    assert len(built) == 1 and again.to_json() == first.to_json()
    assert again.cities[MANY_ID].v6 == first.cities[MANY_ID].v6  # IPv6 survives JSON

    # A subset is its own cache entry; a changed file or format is rebuilt.
    load_index(db, cache_dir=cache, keep={MANY_ID})
    assert len(built) == 2
    st = db.stat()
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_index(db, cache_dir=cache)
    assert len(built) == 3
    monkeypatch.setattr(networks, "INDEX_FORMAT", networks.INDEX_FORMAT + 1)
    load_index(db, cache_dir=cache)
    assert len(built) == 4
    # An unreadable cache entry is rebuilt, not fatal.
    for f in cache.glob("*.json.gz"):
        f.write_bytes(b"not gzip")
    load_index(db, cache_dir=cache)
    assert len(built) == 5


def test_corrupt_database_is_a_value_error(tmp_path: Path) -> None:
    db = write_db(tmp_path / "city.mmdb")
    data = bytearray(db.read_bytes())
    with maxminddb.open_database(str(db)) as reader:
        meta = reader.metadata()
    # Point the root's left record far past the end of the data section.
    assert meta.record_size == 24 and meta.node_count < 0xFFFFFF
    data[0:3] = (0xFFFFFF).to_bytes(3, "big")
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        build_index(bad)
    # A node linking back to the root: a loop, not a hang.
    data = bytearray(write_db(tmp_path / "v4.mmdb", ip_version=4, record_size=24).read_bytes())
    data[3:6] = (0).to_bytes(3, "big")  # the root's right record (128.0.0.0/1)
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="deeper"):
        build_index(bad)


def test_usable_blocks_avoid_special_purpose_space() -> None:
    import random

    from swarmwatch.sim.networks import _NOT_GLOBAL, _usable

    def ip(a: int, bits: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.IPv4Address(a) if bits == 32 else ipaddress.IPv6Address(a)

    special = "0.1.2.3 10.1.1.1 100.64.0.1 127.0.0.1 169.254.1.1 172.16.5.4 192.0.0.8 "
    special += "192.0.2.1 192.168.1.1 198.18.0.1 198.51.100.1 203.0.113.1 224.0.0.1 "
    special += "240.0.0.1 255.255.255.255 ::1 ::ffff:8.8.8.8 100::1 2001::1 2001:db8::1 "
    special += "2001:10::1 2002::1 fc00::1 fe80::1 ff02::1"
    for addr in map(ipaddress.ip_address, special.split()):
        bits = 32 if addr.version == 4 else 128
        assert not _usable(int(addr), bits, bits), addr
    # Whatever the integer check accepts, ipaddress calls global: around every
    # range boundary, and at random.
    rng = random.Random(5)
    probes: list[tuple[int, int]] = []
    for bits, (starts, ends) in _NOT_GLOBAL.items():
        for a in starts + ends:
            probes += [(a + d, bits) for d in (-1, 0, 1) if 0 <= a + d < 1 << bits]
        probes += [(rng.getrandbits(bits), bits) for _ in range(20_000)]
    probes += [((1 << 125) | rng.getrandbits(125), 128) for _ in range(20_000)]  # 2000::/3
    accepted = [(a, bits) for a, bits in probes if _usable(a, bits, bits)]
    assert len(accepted) > 25_000
    for a, bits in accepted:
        assert ip(a, bits).is_global and not ip(a, bits).is_multicast, ip(a, bits)
    # A block is judged by all of its addresses, not its first.
    assert _usable(int(ipaddress.IPv4Address("8.0.0.0")), 8, 32)
    assert not _usable(int(ipaddress.IPv4Address("8.0.0.0")), 6, 32)  # holds 10/8


# --- the real embedded database --------------------------------------------------


def _sample_peers(index: networks.CityNetworkIndex) -> Iterator[tuple[int, str]]:
    from datetime import UTC, datetime

    from swarmwatch.sim import ManualClock, SimulatedSwarm

    start = datetime(2018, 7, 3, tzinfo=UTC)
    swarm = SimulatedSwarm(
        seed=11, n_peers=3000, torrents=["ab" * 20], index=index, clock=ManualClock(start)
    )
    v6 = sum(1 for p in swarm.peers if p.ip.version == 6)
    assert 0 < v6 < len(swarm.peers) // 2
    for p in swarm.peers:
        yield p.geoname_id, str(p.ip)


@pytest.mark.timeout(600)
def test_embedded_geolite2_city(tmp_path: Path) -> None:
    """Peers drawn from the real 2018 GeoLite2 City index geolocate to their own city."""
    import geoip2.database

    from swarmwatch.geoip import city_db_path
    from swarmwatch.sim.population import _geonames_cities

    db = city_db_path()
    keep = set(map(int, _geonames_cities()))
    index = load_index(db, cache_dir=tmp_path, keep=keep)
    assert 15_000 < len(index.cities) <= len(keep)
    assert sum(1 for c in index.cities.values() if c.v6) > 5_000
    with geoip2.database.Reader(str(db)) as reader:
        for gid, peer_ip in _sample_peers(index):
            assert reader.city(peer_ip).city.geoname_id == gid, peer_ip
        # Every kept block is a whole network of its city: its first and last
        # address resolve to the city with exactly that prefix length.
        with maxminddb.open_database(str(db)) as raw:
            for entry in list(index.cities.values())[::50]:
                for bits, blocks in ((32, entry.v4), (128, entry.v6)):
                    for base, plen in blocks:
                        for host in (0, (1 << (bits - plen)) - 1):
                            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = (
                                ipaddress.IPv4Address(base + host)
                                if bits == 32
                                else ipaddress.IPv6Address(base + host)
                            )
                            rec, got = raw.get_with_prefix_len(ip)
                            assert isinstance(rec, dict) and isinstance(rec["city"], dict)
                            assert (rec["city"]["geoname_id"], got) == (entry.geoname_id, plen)
    # A second load comes from the cache.
    assert load_index(db, cache_dir=tmp_path, keep=keep).to_json() == index.to_json()
