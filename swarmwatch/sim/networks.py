"""Which address blocks a GeoIP City database places in each city: the sim's address book.

Built once by walking every network of the database (~10 s of one core for the
3.4 M-network GeoLite2 City) and cached on disk keyed by the file's identity,
so later runs load it in about a second.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import random
from array import array
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Blocks kept per city and family: enough variety, and keeps the cache small (~10 MB).
MAX_NETWORKS_PER_CITY = 8
#: Bumped whenever the cache layout, or how its blocks are chosen, changes
#: (2: sampled after walking the search tree directly).
INDEX_FORMAT = 2

# Where no plausible peer can be: the IANA special-purpose registries' entries that
# are not globally reachable (RFC 6890 and updates; whole entries, even where one
# has a reachable exception), multicast, and for IPv6 all but global unicast. The
# IPv6 aliases of IPv4 space (Teredo 2001::/32, 6to4 2002::/16) are in there too:
# an address drawn there would not geolocate as drawn. Compared as integers
# because ipaddress's is_global costs ~15 us, too slow for every sampled block.
_NOT_GLOBAL_V4 = (
    "0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 "
    "192.0.0.0/24 192.0.2.0/24 192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 "
    "198.51.100.0/24 203.0.113.0/24 224.0.0.0/4 240.0.0.0/4"
)
_NOT_GLOBAL_V6 = "::/3 2001::/23 2001:db8::/32 2002::/16 3fff::/20 4000::/2 8000::/1"


def _ranges(nets: str) -> tuple[list[int], list[int]]:
    """Sorted, merged (starts, ends) of the networks."""
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address))
        for n in map(ipaddress.ip_network, nets.split())
    )
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in spans:
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


_NOT_GLOBAL = {32: _ranges(_NOT_GLOBAL_V4), 128: _ranges(_NOT_GLOBAL_V6)}


@dataclass(slots=True)
class CityNetworks:
    """The blocks one city owns in the database, and what the database says of it."""

    geoname_id: int
    country: str | None
    time_zone: str | None
    v4: list[tuple[int, int]] = field(default_factory=list)  # (network address, prefix length)
    v6: list[tuple[int, int]] = field(default_factory=list)
    seen_v4: int = 0  # blocks seen in all, for reservoir sampling
    seen_v6: int = 0


@dataclass(slots=True)
class CityNetworkIndex:
    """geoname_id -> CityNetworks for one City database."""

    source: str
    cities: dict[int, CityNetworks]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "source": self.source,
            "cities": [
                [c.geoname_id, c.country, c.time_zone, c.v4, [[str(a), p] for a, p in c.v6]]
                for c in self.cities.values()
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CityNetworkIndex:
        if data.get("format") != INDEX_FORMAT:
            raise ValueError("index cache has another format")
        cities: dict[int, CityNetworks] = {}
        for gid, cc, tz, v4, v6 in data["cities"]:
            cities[gid] = CityNetworks(
                gid, cc, tz, [(a, p) for a, p in v4], [(int(a), p) for a, p in v6]
            )
        return cls(source=data["source"], cities=cities)


def _usable(base: int, plen: int, bits: int) -> bool:
    """Whether every address of a block could be a plausible, geolocatable peer.

    A /32 or /128 has no host to spare besides the one address; that is fine.
    """
    starts, ends = _NOT_GLOBAL[bits]
    last = base + (1 << (bits - plen)) - 1
    i = bisect.bisect_right(starts, last) - 1  # the last range starting at or before it
    return i < 0 or ends[i] < base


# --- reading the MaxMind DB file directly ----------------------------------------
#
# maxminddb's iterator decodes every network's full record (names in eight
# languages, subdivisions, postal code ...) into fresh dicts: 3.4 M times for
# GeoLite2 City, ~90 s of CPU. But those networks share ~460 k distinct records,
# and the sim needs only three fields of each. So walk the search tree ourselves,
# collecting (record, network) pairs, then decode each distinct record once and
# only as far as city.geoname_id (plus country and time zone once per city).
# Section names below are those of the MaxMind DB File Format Specification 2.0.

#: "Data Section Separator": 16 zero bytes between the search tree and the data.
_DATA_SECTION_SEPARATOR = 16
# "Output Data Section" type numbers (after resolving "Extended" types).
_POINTER, _STRING, _MAP, _ARRAY, _BOOLEAN = 1, 2, 7, 11, 14
#: Added to a pointer's value by its size ("Pointer - 1": 2048 for 2 bytes, 526336 for 3).
_POINTER_BIAS = (0, 2048, 526336, 0)
#: Subtrees walked (and progress reported) one at a time: 2**_SPLIT_DEPTH of each family.
_SPLIT_DEPTH = 6


class _Database:
    """The search tree and data section of one MaxMind DB file, read as bytes."""

    def __init__(self, db_path: Path) -> None:
        import maxminddb

        with maxminddb.open_database(str(db_path)) as reader:
            meta = reader.metadata()
        self.node_count: int = meta.node_count
        self.ip_version: int = meta.ip_version
        record_size: int = meta.record_size
        if record_size not in (24, 28, 32):
            raise ValueError(f"unknown record size {record_size}")
        self.buf = db_path.read_bytes()
        # "Search Tree Section": a node is two records of record_size bits each.
        self.node_bytes = record_size // 4
        tree_size = self.node_count * self.node_bytes
        self.data_start = tree_size + _DATA_SECTION_SEPARATOR
        if self.data_start > len(self.buf):
            raise ValueError("the search tree extends past the end of the file")
        # "Node Layout": 24 and 32 bits are two plain big-endian integers; with 28
        # the middle byte's high nibble is the left record's most significant.
        self.left_shift = 24 if record_size == 24 else 32
        self.right_mask = (1 << record_size) - 1
        self.left_nibble = 0x0F000000 if record_size == 28 else 0
        self._keys: dict[int, bytes] = {}
        self._city_maps: dict[int, int | None] = {}
        self._first_pairs: dict[bytes, int | None] = {}
        self._pointer_keys: dict[bytes, bytes] = {}

    # --- search tree ---------------------------------------------------------

    def children(self, node: int) -> tuple[int, int]:
        o = node * self.node_bytes
        v = int.from_bytes(self.buf[o : o + self.node_bytes], "big")
        return (v >> self.left_shift) | ((v >> 4) & self.left_nibble), v & self.right_mask

    def descend(self, node: int, bits: int, length: int) -> int:
        """The record reached from node by following the top `length` bits of `bits`."""
        for i in reversed(range(length)):
            if node >= self.node_count:
                break
            node = self.children(node)[(bits >> i) & 1]
        return node

    def walk(
        self,
        root: int,
        path: int,
        skip: int,
        leaves: dict[int, MutableSequence[int]],
        new: Callable[[Iterable[int]], MutableSequence[int]],
        bits: int,
    ) -> int:
        """Add the path of every network under root to leaves[its data record]; count them.

        A path is the network's prefix bits below a leading 1 (so its length is
        implied): the root's path is 1, its right child's 0b11. `skip` is a node
        not to enter (the IPv4 subtree, which an IPv6 tree also links from aliases).
        new makes a record's sequence of paths from its first; bits is the address
        width, which no path may exceed (a corrupt tree could loop).
        This loop is the hot spot (3.6 M nodes), hence locals and no helper calls.
        """
        buf, nb, nc = self.buf, self.node_bytes, self.node_count
        shift, mask, nibble = self.left_shift, self.right_mask, self.left_nibble
        frombytes, get = int.from_bytes, leaves.get
        if root > nc:
            leaves.setdefault(root, new([])).append(path)
            return 1
        if root == nc or root == skip:
            return 0
        found = 0
        too_deep = 1 << (bits + 1)
        stack = [root, path]
        pop, push = stack.pop, stack.append
        while stack:
            path = pop() << 1
            if path >= too_deep:
                raise ValueError("the search tree is deeper than an address is long")
            o = pop() * nb
            v = frombytes(buf[o : o + nb], "big")
            left = (v >> shift) | ((v >> 4) & nibble)
            right = v & mask
            # "Search Lookup Algorithm": a record below node_count is another node,
            # equal to it means "no data", above it points into the data section.
            if right < nc:
                if right != skip:
                    push(right)
                    push(path | 1)
            elif right > nc:
                found += 1
                paths = get(right)
                if paths is None:
                    leaves[right] = new((path | 1,))
                else:
                    paths.append(path | 1)
            if left < nc:
                if left != skip:
                    push(left)
                    push(path)
            elif left > nc:
                found += 1
                paths = get(left)
                if paths is None:
                    leaves[left] = new((path,))
                else:
                    paths.append(path)
        return found

    # --- data section --------------------------------------------------------

    def record_offset(self, record: int) -> int:
        """File offset of a leaf record's data ("Search Tree Section": value - node_count - 16)."""
        off = record - self.node_count - _DATA_SECTION_SEPARATOR + self.data_start
        if off >= len(self.buf):
            raise ValueError("a search tree record points past the data section")
        return off

    def _field(self, off: int) -> tuple[int, int, int]:
        """(type, size, payload offset) of the field at off; for a pointer, size is its target.

        "Data Field Format": a control byte holds the type in its top 3 bits (0 means
        "Extended": the type is 7 + the next byte) and the size in its low 5 bits
        (29, 30, 31: the size continues in 1, 2, 3 more bytes).
        """
        buf = self.buf
        ctrl = buf[off]
        kind = ctrl >> 5
        off += 1
        if kind == _POINTER:
            # "Pointer - 1": bits 3-4 give 1 to 4 more bytes; below 4, the low three
            # bits are the value's top bits. Offsets count from the data section.
            n = ((ctrl >> 3) & 3) + 1
            value = int.from_bytes(buf[off : off + n], "big")
            if n < 4:
                value = (((ctrl & 7) << (8 * n)) | value) + _POINTER_BIAS[n - 1]
            return kind, self.data_start + value, off + n
        if kind == 0:
            kind = 7 + buf[off]
            off += 1
        size = ctrl & 0x1F
        if size >= 29:
            n = size - 28
            size = (29, 285, 65821)[n - 1] + int.from_bytes(buf[off : off + n], "big")
            off += n
        return kind, size, off

    def _resolve(self, off: int) -> tuple[int, int, int, int]:
        """(type, size, payload offset, offset after the field), following one pointer."""
        kind, size, payload = self._field(off)
        if kind != _POINTER:
            return kind, size, payload, payload + size
        # A pointer never points at a pointer (spec, "Pointer - 1").
        kind, tsize, tpayload = self._field(size)
        return kind, tsize, tpayload, payload

    def _skip(self, off: int) -> int:
        """Offset just after the field at off, without decoding it."""
        kind, size, payload = self._field(off)
        if kind == _POINTER:
            return payload
        if kind == _MAP:
            for _ in range(2 * size):
                payload = self._skip(payload)
            return payload
        if kind == _ARRAY:
            for _ in range(size):
                payload = self._skip(payload)
            return payload
        if kind == _BOOLEAN:  # the size is the value; nothing follows
            return payload
        return payload + size

    def _key(self, off: int) -> tuple[bytes, int]:
        """A map key (a string, usually a pointer to one all records share) and the next offset."""
        kind, size, payload = self._field(off)
        if kind == _POINTER:
            key = self._keys.get(size)
            if key is None:
                _, n, start = self._field(size)
                key = self._keys[size] = self.buf[start : start + n]
            return key, payload
        return self.buf[payload : payload + size], payload + size

    def _map_fields(self, off: int, wanted: tuple[bytes, ...]) -> dict[bytes, int]:
        """Offsets of the wanted keys' values in the map at off (empty if it is no map)."""
        kind, size, payload, _ = self._resolve(off)
        found: dict[bytes, int] = {}
        if kind != _MAP:
            return found
        buf, keys = self.buf, self._pointer_keys
        for _ in range(size):
            # Keys and most values are pointers; step over those without _field().
            ctrl = buf[payload]
            if ctrl >> 5 == _POINTER:
                end = payload + 2 + ((ctrl >> 3) & 3)
                raw = buf[payload:end]
                key = keys.get(raw)
                if key is None:
                    key = keys[raw] = self._key(payload)[0]
                payload = end
            else:
                key, payload = self._key(payload)
            if key in wanted:
                found[key] = payload
                if len(found) == len(wanted):
                    break
            ctrl = buf[payload]
            if ctrl >> 5 == _POINTER:
                payload += 2 + ((ctrl >> 3) & 3)
            else:
                payload = self._skip(payload)
        return found

    def _uint(self, off: int) -> int | None:
        kind, size, payload, _ = self._resolve(off)
        # "unsigned 16-bit int - 5", "unsigned 32-bit int - 6"
        if kind not in (5, 6):
            return None
        return int.from_bytes(self.buf[payload : payload + size], "big")

    def _string(self, off: int) -> str | None:
        kind, size, payload, _ = self._resolve(off)
        if kind != _STRING:
            return None
        return self.buf[payload : payload + size].decode("utf-8", "replace")

    def geoname_id(self, record: int) -> int | None:
        """city.geoname_id of a leaf record (None: the record names no city)."""
        buf, off = self.buf, self.record_offset(record)
        # Fast path for the usual layout (MaxMind's writer sorts keys, so "city"
        # comes first, and shares both key and value through pointers): the
        # bytes of that first key/value pair identify the city.
        if buf[off] >> 5 == _MAP and buf[off + 1] >> 5 == _POINTER:
            end = off + 3 + ((buf[off + 1] >> 3) & 3)
            if buf[end] >> 5 == _POINTER:
                pair = buf[off + 1 : end + 2 + ((buf[end] >> 3) & 3)]
                gid = self._first_pairs.get(pair, -1)
                if gid != -1:
                    return gid
                if self._key(off + 1)[0] == b"city":
                    gid = self._first_pairs[pair] = self._city_id(end)
                    return gid
        city = self._map_fields(off, (b"city",)).get(b"city")
        return None if city is None else self._city_id(city)

    def _city_id(self, city: int) -> int | None:
        """geoname_id of the city map at (or pointed to from) offset city."""
        kind, target, _ = self._field(city)
        memo = target if kind == _POINTER else city
        gid = self._city_maps.get(memo, -1)
        if gid == -1:
            gid_off = self._map_fields(city, (b"geoname_id",)).get(b"geoname_id")
            gid = self._city_maps[memo] = None if gid_off is None else self._uint(gid_off)
        return gid

    def place(self, record: int) -> tuple[str | None, str | None]:
        """country.iso_code and location.time_zone of a leaf record."""
        fields = self._map_fields(self.record_offset(record), (b"country", b"location"))
        found: list[str | None] = []
        for key, sub in ((b"country", b"iso_code"), (b"location", b"time_zone")):
            off = fields.get(key)
            if off is not None:
                off = self._map_fields(off, (sub,)).get(sub)
            found.append(None if off is None else self._string(off))
        return found[0], found[1]


def _split(db: _Database, root: int, path: int, depth: int, skip: int) -> list[tuple[int, int]]:
    """(node or record, path) of the subtrees `depth` levels below root, left to right."""
    out = [(root, path)]
    for _ in range(depth):
        nxt: list[tuple[int, int]] = []
        for node, p in out:
            if node < db.node_count and node != skip:
                left, right = db.children(node)
                nxt += [(left, p << 1), (right, p << 1 | 1)]
            else:
                nxt.append((node, p))  # a leaf above the split depth stays as it is
        out = nxt
    return out


def _block(path: int, bits: int) -> tuple[int, int]:
    """(network address, prefix length) of a path under its leading 1."""
    plen = path.bit_length() - 1
    return (path ^ (1 << plen)) << (bits - plen), plen


def _distinct_draws(rng: random.Random, n: int, limit: int) -> Iterator[int]:
    """Up to limit distinct uniform draws from range(n), n > limit."""
    seen: set[int] = set()
    while len(seen) < limit:
        i = rng.randrange(n)
        if i not in seen:
            seen.add(i)
            yield i


def _sample(
    rng: random.Random,
    groups: list[MutableSequence[int]],
    bits: int,
    k: int = MAX_NETWORKS_PER_CITY,
) -> tuple[int, list[tuple[int, int]]]:
    """(number of blocks, up to k usable ones drawn uniformly) of a city's path groups.

    Unusable blocks are rare, so draw a few spares and check only those (the
    check goes through ipaddress, too slow for every one of 3.4 M networks).
    """
    total = sum(map(len, groups))
    starts = list(itertools.accumulate(map(len, groups), initial=0))
    if total <= 2 * k:
        picks: Iterable[int] = rng.sample(range(total), total)
    else:
        # Lazily, as most cities need just k draws: random.sample() costs ~1 us per
        # element asked for even when the population is large.
        picks = _distinct_draws(rng, total, 4 * k)
    out: list[tuple[int, int]] = []
    for i in picks:
        g = bisect.bisect_right(starts, i) - 1
        base, plen = _block(groups[g][i - starts[g]], bits)
        if _usable(base, plen, bits):
            out.append((base, plen))
            if len(out) == k:
                break
    return total, out


def build_index(
    db_path: Path,
    *,
    seed: int = 0,
    keep: set[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CityNetworkIndex:
    """Walk every network of the database; keep a uniform sample of blocks per city.

    keep, when given, limits the index to those geoname ids (the sim only draws
    cities GeoNames knows a population for). progress, when given, is called with
    the number of networks walked so far, a few dozen times.
    """
    try:
        return _build(_Database(db_path), str(db_path), seed, keep, progress)
    except (IndexError, RecursionError) as e:  # offsets or nesting a sound file never has
        raise ValueError(f"{db_path} is not a well-formed MaxMind DB file: {e!r}") from e


def _build(
    db: _Database,
    source: str,
    seed: int,
    keep: set[int] | None,
    progress: Callable[[int], None] | None,
) -> CityNetworkIndex:
    nc = db.node_count
    # (family bits, root, root path, node to skip)
    roots: list[tuple[int, int, int, int]] = []
    if db.ip_version == 4:
        roots.append((32, 0, 1, -1))
    else:
        # "IPv4 addresses in an IPv6 tree": IPv4 lives at ::/96, and the IPv6
        # aliases (::ffff:0:0/96, 2001::/32, 2002::/16) link to that same node.
        v4_root = db.descend(0, 0, 96)
        if v4_root < nc:
            roots.append((32, v4_root, 1, -1))
        # Only global unicast (2000::/3) can hold a plausible peer.
        roots.append((128, db.descend(0, 0b001, 3), 0b1001, v4_root))

    leaves: dict[int, dict[int, MutableSequence[int]]] = {}  # bits -> record -> paths
    walked = 0
    for bits, root, path, skip in roots:
        leaves[bits] = {}
        # An IPv4 path fits 33 bits: 8 bytes each in an array rather than a 40-byte
        # int in a list (3 M of them: ~100 MB less at the peak).
        new: Callable[[Iterable[int]], MutableSequence[int]] = (
            functools.partial(array, "Q") if bits == 32 else list
        )
        for node, p in _split(db, root, path, _SPLIT_DEPTH, skip):
            walked += db.walk(node, p, skip, leaves[bits], new, bits)
            if progress is not None:
                progress(walked)

    # Decode each distinct record once: ~460 k of them for 3.4 M networks.
    cities: dict[int, CityNetworks] = {}
    groups: dict[
        tuple[int, int], list[MutableSequence[int]]
    ] = {}  # (geoname id, bits) -> path groups
    gid_of: dict[int, int | None] = {}  # a few records serve IPv4 and IPv6 networks
    for bits, by_record in leaves.items():
        for record, paths in by_record.items():
            gid = gid_of.get(record, -1)
            if gid == -1:
                gid = gid_of[record] = db.geoname_id(record)
            if gid is None or (keep is not None and gid not in keep):
                continue
            if gid not in cities:
                cities[gid] = CityNetworks(gid, *db.place(record))
            groups.setdefault((gid, bits), []).append(paths)

    # Sample in a fixed order, so the index depends on the seed and file alone.
    rng = random.Random(seed)
    for gid, bits in sorted(groups):
        entry = cities[gid]
        if bits == 32:
            entry.seen_v4, entry.v4 = _sample(rng, groups[gid, bits], 32)
        else:
            entry.seen_v6, entry.v6 = _sample(rng, groups[gid, bits], 128)
    return CityNetworkIndex(source=source, cities=cities)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarmwatch"


def _cache_key(db_path: Path) -> str:
    st = db_path.stat()
    ident = f"{db_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{INDEX_FORMAT}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def load_index(
    db_path: Path,
    *,
    cache_dir: Path | None = None,
    keep: set[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CityNetworkIndex:
    """The index for db_path: from the cache when the file is unchanged, else built and cached."""
    cache_dir = cache_dir or default_cache_dir()
    subset = "all" if keep is None else hashlib.sha256(repr(sorted(keep)).encode()).hexdigest()[:8]
    cache = cache_dir / f"city-networks-{_cache_key(db_path)}-{subset}.json.gz"
    if cache.exists():
        try:
            with gzip.open(cache, "rt", encoding="utf-8") as f:
                return CityNetworkIndex.from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("network index cache %s unreadable; rebuilding", cache)
    log.info("building the city network index of %s (once per database file)", db_path)
    index = build_index(db_path, keep=keep, progress=progress)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(index.to_json(), f)
        tmp.replace(cache)
    except OSError:
        log.warning("could not write the network index cache under %s", cache_dir)
    return index


__all__ = [
    "MAX_NETWORKS_PER_CITY",
    "CityNetworkIndex",
    "CityNetworks",
    "build_index",
    "default_cache_dir",
    "load_index",
]
