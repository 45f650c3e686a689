"""Geolocation: an address to a place (country, GeoNames city, metro, H3 cell, ASN) or an anomaly.

Any MaxMind-format City database works (GeoIP2/GeoLite2 City, DB-IP City Lite).
IPv4 addresses are placed a batch at a time from the database's range table
(rangetable); IPv6 ones by a tree walk, cached per network.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import maxminddb

from swarmwatch.parentwatch import exit_with_parent
from swarmwatch.pipeline.binning import cell_for
from swarmwatch.pipeline.rangetable import RangeTable

log = logging.getLogger(__name__)

#: Added to an IPv6 address's integer so that v4 and v6 keys never collide.
V6_FLAG = 1 << 128
_V4_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96, RFC 4291 section 2.5.5.2


class AnomalyReason(enum.StrEnum):
    """Why a sighting has no city (alpha60's anomalies). Values fit anomaly.reason (16)."""

    LOOPBACK = "loopback"
    PRIVATE = "private"  # RFC 1918, RFC 6598 shared space, RFC 4193 unique local
    MULTICAST = "multicast"
    RESERVED = "reserved"  # special-purpose, documentation, link-local, bogon
    NOT_FOUND = "not_found"  # no record in the database
    NO_CITY = "no_city"  # a record with a country at most
    NULL_ISLAND = "null_island"  # a record placed at 0°N 0°E: broken data


class Placement(NamedTuple):
    """Where an address is. anomaly is None when the city is known."""

    anomaly: str | None
    country: str | None
    geoname_id: int | None
    metro_id: int | None
    h3_cell: int | None
    asn: int | None


#: What a raw lookup yields before the metro is known: (anomaly, country, geoname_id, h3, asn).
RawPlace = tuple[str | None, str | None, int | None, int | None, int | None]

# IANA special-purpose registries (RFC 6890 and successors) plus IPv6 space outside
# 2000::/3, which is unallocated: a peer claiming such an address is a bogon.
_SPECIAL_V4 = [
    ("0.0.0.0/8", AnomalyReason.RESERVED),
    ("10.0.0.0/8", AnomalyReason.PRIVATE),
    ("100.64.0.0/10", AnomalyReason.PRIVATE),
    ("127.0.0.0/8", AnomalyReason.LOOPBACK),
    ("169.254.0.0/16", AnomalyReason.RESERVED),
    ("172.16.0.0/12", AnomalyReason.PRIVATE),
    ("192.0.0.0/24", AnomalyReason.RESERVED),
    ("192.0.2.0/24", AnomalyReason.RESERVED),
    ("192.88.99.0/24", AnomalyReason.RESERVED),
    ("192.168.0.0/16", AnomalyReason.PRIVATE),
    ("198.18.0.0/15", AnomalyReason.RESERVED),
    ("198.51.100.0/24", AnomalyReason.RESERVED),
    ("203.0.113.0/24", AnomalyReason.RESERVED),
    ("224.0.0.0/4", AnomalyReason.MULTICAST),
    ("240.0.0.0/4", AnomalyReason.RESERVED),
]
_SPECIAL_V6 = [
    ("::/3", AnomalyReason.RESERVED),  # holds ::1, IPv4-compatible and NAT64 prefixes
    ("::1/128", AnomalyReason.LOOPBACK),
    ("2001::/23", AnomalyReason.RESERVED),
    ("2001:db8::/32", AnomalyReason.RESERVED),
    ("4000::/2", AnomalyReason.RESERVED),
    ("8000::/1", AnomalyReason.RESERVED),
    ("fc00::/7", AnomalyReason.PRIVATE),
    ("fe80::/10", AnomalyReason.RESERVED),
    ("ff00::/8", AnomalyReason.MULTICAST),
]


class _SpecialRanges:
    """Sorted, non-overlapping special ranges; a more specific range wins over its parent."""

    def __init__(self, specs: list[tuple[str, AnomalyReason]]) -> None:
        nets = [(ipaddress.ip_network(n), r) for n, r in specs]
        # Paint coarse ranges first, then finer ones over them.
        points: list[tuple[int, int, AnomalyReason]] = []
        for net, reason in sorted(nets, key=lambda x: x[0].prefixlen):
            lo, hi = int(net.network_address), int(net.broadcast_address)
            painted: list[tuple[int, int, AnomalyReason]] = []
            for a, b, r in points:
                if b < lo or a > hi:
                    painted.append((a, b, r))
                    continue
                if a < lo:
                    painted.append((a, lo - 1, r))
                if b > hi:
                    painted.append((hi + 1, b, r))
            painted.append((lo, hi, reason))
            points = sorted(painted)
        self._starts = [a for a, _, _ in points]
        self._ranges = points

    def reason(self, n: int) -> AnomalyReason | None:
        i = bisect.bisect_right(self._starts, n) - 1
        if i >= 0:
            a, b, r = self._ranges[i]
            if a <= n <= b:
                return r
        return None

    def overlaps(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self._starts, hi) - 1
        return i >= 0 and self._ranges[i][1] >= lo


_SPECIAL = {4: _SpecialRanges(_SPECIAL_V4), 6: _SpecialRanges(_SPECIAL_V6)}


def address_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """An address as one int: IPv4 as is, IPv6 plus V6_FLAG; IPv4-mapped IPv6 as IPv4.

    A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; it is the same
    peer, so it must get the same key and the same place.
    """
    n = int(ip)
    if ip.version == 4:
        return n
    if n >> 32 == _V4_MAPPED_PREFIX:
        return n & 0xFFFFFFFF
    return n | V6_FLAG


def packed_key(key: int) -> bytes:
    """The 4- or 16-byte network-order form of an address_key (what gets hashed)."""
    if key < V6_FLAG:
        return key.to_bytes(4, "big")
    return (key ^ V6_FLAG).to_bytes(16, "big")


def special_reason(key: int) -> AnomalyReason | None:
    """The anomaly an address is by its range alone (loopback, private, ...), if any."""
    if key < V6_FLAG:
        return _SPECIAL[4].reason(key)
    return _SPECIAL[6].reason(key ^ V6_FLAG)


class NetworkCache:
    """Placements cached per network, not per address.

    A network of prefix p is stored under the smallest level L >= p, keyed by the
    address's first L bits: any later address sharing those bits is in the same
    network. Networks in a MaxMind tree are disjoint, so at most one level matches.
    When full, the cache starts again: it holds recent lookups, not a copy of the DB.
    """

    V4_LEVELS = (24, 20, 16, 28, 12, 32, 8)
    V6_LEVELS = (48, 56, 64, 40, 32, 128, 24, 16)

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._v4 = [(32 - lv, lv, dict[int, Placement]()) for lv in self.V4_LEVELS]
        self._v6 = [(128 - lv, lv, dict[int, Placement]()) for lv in self.V6_LEVELS]
        self._v4_sorted = sorted(self.V4_LEVELS)
        self._v6_sorted = sorted(self.V6_LEVELS)
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._size

    def get(self, key: int) -> Placement | None:
        if key < V6_FLAG:
            for shift, _, d in self._v4:
                hit = d.get(key >> shift)
                if hit is not None:
                    return hit
            return None
        n = key ^ V6_FLAG
        for shift, _, d in self._v6:
            hit = d.get(n >> shift)
            if hit is not None:
                return hit
        return None

    def put(self, key: int, prefix_len: int, placement: Placement) -> None:
        if self._size >= self.max_entries:
            self.clear()
        if key < V6_FLAG:
            n, bits, levels, table = key, 32, self._v4_sorted, self._v4
        else:
            n, bits, levels, table = key ^ V6_FLAG, 128, self._v6_sorted, self._v6
        prefix_len = max(0, min(prefix_len, bits))
        host = bits - prefix_len
        lo = (n >> host) << host
        hi = lo | ((1 << host) - 1)
        special = _SPECIAL[4 if bits == 32 else 6]
        # A network overlapping a special range is cached for this address alone, so
        # a private or loopback address inside it is still classified on its own.
        if host and special.overlaps(lo, hi):
            prefix_len = bits
        level = levels[bisect.bisect_left(levels, prefix_len)]
        for shift, lv, d in table:
            if lv == level:
                d[n >> shift] = placement
                self._size += 1
                return

    def clear(self) -> None:
        for _, _, d in (*self._v4, *self._v6):
            d.clear()
        self._size = 0


def _ip_object(key: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if key < V6_FLAG:
        return ipaddress.IPv4Address(key)
    return ipaddress.IPv6Address(key ^ V6_FLAG)


def _city_place(record: Any) -> RawPlace:
    """The fields we keep from a MaxMind City record (schema shared by DB-IP City Lite)."""
    if not isinstance(record, dict):
        return (AnomalyReason.NOT_FOUND.value, None, None, None, None)
    country_rec = record.get("country") or {}
    country = country_rec.get("iso_code") if isinstance(country_rec, dict) else None
    country = country[:2] if isinstance(country, str) else None
    city = record.get("city") or {}
    geoname_id = city.get("geoname_id") if isinstance(city, dict) else None
    location = record.get("location") or {}
    lat = location.get("latitude") if isinstance(location, dict) else None
    lon = location.get("longitude") if isinstance(location, dict) else None
    point: tuple[float, float] | None = None
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        point = (float(lat), float(lon))
    if point is not None and abs(point[0]) < 1e-4 and abs(point[1]) < 1e-4:
        return (AnomalyReason.NULL_ISLAND.value, country, None, None, None)
    if not isinstance(geoname_id, int):
        return (AnomalyReason.NO_CITY.value, country, None, None, None)
    cell = cell_for(*point) if point is not None else None
    return (None, country, geoname_id, cell, None)


class SearchTree:
    """A MaxMind DB search tree walked here, so a lookup can name its record without decoding it.

    Decoding a City record (names in eight languages, subdivisions, ...) is ~95 % of
    maxminddb's get(); the tree walk is the cheap part. Walking the tree ourselves
    gives the data-section pointer, so each distinct record is decoded once per file
    (MaxMind DB spec, "Search Tree Section": node layout for 24-, 28- and 32-bit records).
    """

    def __init__(self, path: str | Path, metadata: Any) -> None:
        self.node_count = int(metadata.node_count)
        self.record_size = int(metadata.record_size)
        if self.record_size not in (24, 28, 32):
            raise ValueError(f"unsupported record size {self.record_size}")
        self.ip_version = int(metadata.ip_version)
        with open(path, "rb") as f:
            self.tree = f.read(self.node_count * self.record_size // 4)
        if len(self.tree) != self.node_count * self.record_size // 4:
            raise ValueError("the search tree is truncated")
        # IPv4 addresses live under ::/96 of an IPv6 tree.
        node, depth = 0, 0
        if self.ip_version == 6:
            while depth < 96 and node < self.node_count:
                node = self._child(node, 0)
                depth += 1
        self.v4_start = node
        # Where each IPv4 /16 leaves off, filled on first use: skips the first 16
        # steps of every IPv4 walk (the top of the tree is shared by everyone).
        self._v4_mid: list[tuple[int, int] | None] = [None] * 65536

    def _descend(self, node: int, n: int, bits: int, depth: int, stop: int) -> tuple[int, int]:
        child = self._child
        nc = self.node_count
        while node < nc and depth < stop:
            node = child(node, (n >> (bits - 1 - depth)) & 1)
            depth += 1
        return node, depth

    def _child(self, node: int, bit: int) -> int:
        t, size = self.tree, self.record_size
        if size == 28:
            o = node * 7
            if bit:
                return ((t[o + 3] & 0x0F) << 24) | (t[o + 4] << 16) | (t[o + 5] << 8) | t[o + 6]
            return ((t[o + 3] & 0xF0) << 20) | (t[o] << 16) | (t[o + 1] << 8) | t[o + 2]
        width = size // 8
        o = node * 2 * width + (width if bit else 0)
        return int.from_bytes(t[o : o + width], "big")

    def find(self, key: int) -> tuple[int, int] | None:
        """(record pointer, prefix length) of an address_key; pointer == node_count: no data.

        None for an IPv6 address in an IPv4-only tree.
        """
        t, nc = self.tree, self.node_count
        depth = 0
        if key < V6_FLAG:
            n, bits = key, 32
            mid = self._v4_mid[n >> 16]
            if mid is None:
                mid = self._v4_mid[n >> 16] = self._descend(self.v4_start, n, 32, 0, 16)
            node, depth = mid
        elif self.ip_version == 6:
            n, bits, node = key ^ V6_FLAG, 128, 0
        else:
            return None
        if self.record_size == 28:  # GeoLite2/GeoIP2 City: inlined, this loop is the hot path
            while node < nc and depth < bits:
                o = node * 7
                if (n >> (bits - 1 - depth)) & 1:
                    node = ((t[o + 3] & 0x0F) << 24) | (t[o + 4] << 16) | (t[o + 5] << 8) | t[o + 6]
                else:
                    node = ((t[o + 3] & 0xF0) << 20) | (t[o] << 16) | (t[o + 1] << 8) | t[o + 2]
                depth += 1
        else:
            child = self._child
            while node < nc and depth < bits:
                node = child(node, (n >> (bits - 1 - depth)) & 1)
                depth += 1
        if node < nc:  # ran out of bits inside the tree: a malformed file
            return (nc, depth)
        return (node, depth)


class DatabaseLookup:
    """The raw lookups (no network cache): one City reader and an optional ASN reader.

    Used in-process, or in a worker process so geolocation runs on the other core.
    City records are decoded once per distinct record (see SearchTree), and the
    decoded place is kept per record pointer: a database has far fewer records
    (cities) than networks.
    """

    #: Decoded places kept at most (GeoLite2 City has ~150k distinct records).
    MAX_RECORDS = 500_000

    def __init__(self, city_db: str | Path, asn_db: str | Path | None = None) -> None:
        self.city = maxminddb.open_database(str(city_db))
        self.asn = maxminddb.open_database(str(asn_db)) if asn_db else None
        kind = self.city.metadata().database_type
        if "city" not in kind.lower():
            self.close()
            raise ValueError(f"{city_db} is a {kind!r} database, not a City database")
        self._city_path = str(city_db)
        self._tree: SearchTree | None = None
        self._records: dict[int, RawPlace] = {}

    @property
    def tree(self) -> SearchTree:
        # Loaded on first use: a Geolocator whose lookups all run in the worker
        # process never needs its own copy of the tree in the main process.
        if self._tree is None:
            self._tree = SearchTree(self._city_path, self.city.metadata())
        return self._tree

    def resolve(self, keys: Iterable[int]) -> list[tuple[int, RawPlace]]:
        """(prefix length, place) per address; the prefix is the network it stands for."""
        out: list[tuple[int, RawPlace]] = []
        tree = self.tree
        find = tree.find
        records = self._records
        empty = tree.node_count
        not_found: RawPlace = (AnomalyReason.NOT_FOUND.value, None, None, None, None)
        for key in keys:
            bits = 32 if key < V6_FLAG else 128
            special = special_reason(key)
            if special is not None:
                out.append((bits, (special.value, None, None, None, None)))
                continue
            found = find(key)
            if found is None:  # an IPv6 address in an IPv4-only database
                out.append((bits, not_found))
                continue
            pointer, plen = found
            if pointer == empty:
                place = not_found
            else:
                cached = records.get(pointer)
                if cached is None:
                    # Any address of the network decodes to the same record.
                    cached = _city_place(self.city.get(_ip_object(key)))
                    if len(records) >= self.MAX_RECORDS:
                        records.clear()
                    records[pointer] = cached
                place = cached
            if self.asn is not None:
                ip = _ip_object(key)
                try:
                    asn_record, asn_plen = self.asn.get_with_prefix_len(ip)
                except ValueError:
                    asn_record, asn_plen = None, bits
                number = (
                    asn_record.get("autonomous_system_number")
                    if isinstance(asn_record, dict)
                    else None
                )
                if isinstance(number, int):
                    place = (*place[:4], number)
                plen = max(plen, asn_plen)  # the intersection of both networks
            out.append((plen, place))
        return out

    def close(self) -> None:
        self.city.close()
        if self.asn is not None:
            self.asn.close()


# --- the worker process ----------------------------------------------------------------

_worker_lookup: DatabaseLookup | None = None


def _worker_open(city_db: str, asn_db: str | None, parent_pid: int) -> None:
    global _worker_lookup
    exit_with_parent(parent_pid)  # a killed parent must not leave its workers running
    _worker_lookup = DatabaseLookup(city_db, asn_db)


def _worker_resolve(keys: list[int]) -> list[tuple[int, RawPlace]]:
    assert _worker_lookup is not None, "worker not initialised"
    return _worker_lookup.resolve(keys)


_NOT_FOUND: RawPlace = (AnomalyReason.NOT_FOUND.value, None, None, None, None)


def range_table(city_db: Path, cache_dir: Path | None = None) -> RangeTable:
    """The City database's IPv4 range table, from the user's cache (built there if new)."""
    specials = [(lo, hi, reason.value) for lo, hi, reason in _SPECIAL[4]._ranges]
    return RangeTable.for_database(city_db, _city_place, specials, _NOT_FOUND, cache_dir)


class Geolocator:
    """Addresses to Placements: IPv4 from the range table, a batch at a time; the rest
    (IPv6, or everything when there is no table) network cache first, then the database.

    With workers=1 the database lookups run in a separate process (the other
    core); the cache stays here, so only misses cross the process boundary.
    Addresses travel to the worker through a pipe in memory, never a file.

    ranges: use the IPv4 range table (built once per database file and kept in
    range_cache_dir, by default the user's cache directory). Not with an ASN
    database, whose networks the table does not hold.
    """

    def __init__(
        self,
        city_db: str | Path,
        asn_db: str | Path | None = None,
        *,
        metro_of: dict[int, int] | None = None,
        workers: int = 0,
        cache_entries: int = 1_000_000,
        ranges: bool = True,
        range_cache_dir: Path | None = None,
    ) -> None:
        self.city_db = Path(city_db)
        self.asn_db = Path(asn_db) if asn_db else None
        self.metro_of = metro_of or {}
        self.cache = NetworkCache(cache_entries)
        self._local = DatabaseLookup(self.city_db, self.asn_db)
        self.ranges: RangeTable | None = None
        if ranges and self.asn_db is None:
            self.ranges = range_table(self.city_db, range_cache_dir)
        # Placements of the range table's places met so far, by place index.
        self._range_places: dict[int, Placement] = {}
        self._executor: Executor | None = None
        if workers > 0:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=get_context("spawn"),  # fork is unsafe with threads running
                initializer=_worker_open,
                initargs=(
                    str(self.city_db),
                    str(self.asn_db) if self.asn_db else None,
                    os.getpid(),
                ),
            )

    @property
    def metadata(self) -> Any:
        return self._local.city.metadata()

    @property
    def asn_metadata(self) -> Any:
        return self._local.asn.metadata() if self._local.asn is not None else None

    def _placement(self, raw: RawPlace) -> Placement:
        anomaly, country, geoname_id, cell, asn = raw
        metro = self.metro_of.get(geoname_id) if geoname_id is not None else None
        return Placement(anomaly, country, geoname_id, metro, cell, asn)

    def store(self, keys: list[int], resolved: list[tuple[int, RawPlace]]) -> list[Placement]:
        """Cache what the database said for keys; return their Placements."""
        out = []
        for key, (plen, raw) in zip(keys, resolved, strict=True):
            placement = self._placement(raw)
            self.cache.put(key, plen, placement)
            out.append(placement)
        return out

    def cached(self, key: int) -> Placement | None:
        """The placement cached for the address key's network, or None (no lookup)."""
        return self.cache.get(key)

    async def locate_many(self, keys: list[int]) -> list[Placement]:
        """Placements of address keys, cached afterwards: looked up in the worker
        process if there is one (the other core), else here. For the misses of
        cached(): every key is looked up, cached or not."""
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            resolved = await loop.run_in_executor(self._executor, _worker_resolve, keys)
        else:
            resolved = self._local.resolve(keys)
        return self.store(keys, resolved)

    async def place_batch(self, keys: list[int]) -> tuple[list[Placement], int]:
        """Placements of address keys, and how many were looked up in the database
        (the rest came from the range table or the network cache)."""
        table = self.ranges
        if table is None:
            return await self._place_cached(keys)
        v6_at = [i for i, k in enumerate(keys) if k >= 1 << 32]
        if not v6_at:  # the usual batch: IPv4 only
            return self._place_ranged(keys), 0
        v4_at = [i for i, k in enumerate(keys) if k < 1 << 32]
        ranged = self._place_ranged([keys[i] for i in v4_at])
        placed, lookups = await self._place_cached([keys[i] for i in v6_at])
        by_index = dict(zip(v4_at, ranged, strict=True))
        by_index.update(zip(v6_at, placed, strict=True))
        return [by_index[i] for i in range(len(keys))], lookups

    def _place_ranged(self, keys: list[int]) -> list[Placement]:
        assert self.ranges is not None
        table = self.ranges
        ids = table.place_ids(keys).tolist()
        known = self._range_places
        for i in set(ids).difference(known):
            known[i] = self._placement(table.place(i))
        return list(map(known.__getitem__, ids))

    async def _place_cached(self, keys: list[int]) -> tuple[list[Placement], int]:
        cached = self.cache.get
        out = [cached(k) for k in keys]
        misses = list(dict.fromkeys(k for k, p in zip(keys, out, strict=True) if p is None))
        if not misses:
            return out, 0  # type: ignore[return-value]  # no None left
        found = dict(zip(misses, await self.locate_many(misses), strict=True))
        return [p if p is not None else found[k] for k, p in zip(keys, out, strict=True)], len(
            misses
        )

    async def warm(self) -> None:
        """Start the worker process now (it starts on first use), so that its start-up
        is not paid by the first batch (or inside a benchmark's clock)."""
        if self._executor is not None:
            await self.locate_many([address_key(ipaddress.IPv4Address("127.0.0.1"))])

    @property
    def has_metros(self) -> bool:
        return bool(self.metro_of)

    def add_metros(self, metro_of: Mapping[int, int]) -> None:
        """Metro areas by city (geoname_id -> metro id), once places are loaded. Cached
        placements lack them, so the cache starts again."""
        self.metro_of.update(metro_of)
        self.cache.clear()
        self._range_places.clear()

    def locate(self, key: int) -> Placement:
        """One address, synchronously (tests, the replay path's first look)."""
        if self.ranges is not None and key < 1 << 32:
            return self._place_ranged([key])[0]
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        return self.store([key], self._local.resolve([key]))[0]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._local.close()


__all__ = [
    "AnomalyReason",
    "DatabaseLookup",
    "Geolocator",
    "NetworkCache",
    "Placement",
    "SearchTree",
    "V6_FLAG",
    "address_key",
    "packed_key",
    "range_table",
    "special_reason",
]
