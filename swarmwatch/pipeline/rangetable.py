"""A City database's IPv4 space flattened to sorted ranges, so a batch is placed with one
numpy searchsorted instead of a tree walk per address.

Built once per database file (its SHA-256) by walking the MaxMind search tree level by
level with numpy, and kept on disk in the user's cache directory. The file holds GeoIP
networks and the places of their records, nothing about any peer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import maxminddb
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

#: Bumped whenever what a table holds changes, so an older cache file is never read.
FORMAT_VERSION = 1
#: Table files not used for this long are deleted when a new one is cached: one per
#: database file ever used would grow without bound (a GeoLite2 City table is ~30 MB,
#: and a database is replaced twice a week by `geoip install`).
KEEP_UNUSED_DAYS = 30
_IPV4_SPACE = 1 << 32

#: What a lookup yields (geolocate.RawPlace): (anomaly, country, geoname_id, h3, asn).
RawPlace = tuple[str | None, str | None, int | None, int | None, int | None]
#: A City record (as maxminddb decodes it) to the fields kept.
DecodeRecord = Callable[[Any], RawPlace]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/swarmwatch (or ~/.cache/swarmwatch): per user, outside any checkout."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarmwatch"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PlaceColumns:
    """The distinct places of a table as columns (a tuple each would be ~450k objects
    for GeoLite2 City, most never met): anomaly (index + 1 into reasons, 0: none),
    country ('' none), geoname_id (-1 none), H3 cell (0 none)."""

    def __init__(
        self,
        reasons: list[str],
        reason: npt.NDArray[np.int8],
        country: npt.NDArray[Any],
        geoname: npt.NDArray[np.int64],
        cell: npt.NDArray[np.uint64],
    ) -> None:
        self.reasons = reasons
        self.reason = reason
        self.country = country
        self.geoname = geoname
        self.cell = cell

    def __len__(self) -> int:
        return len(self.reason)

    @classmethod
    def of(cls, places: list[RawPlace]) -> PlaceColumns:
        reasons = sorted({p[0] for p in places if p[0] is not None})
        return cls(
            reasons,
            np.array([0 if p[0] is None else reasons.index(p[0]) + 1 for p in places], np.int8),
            np.array([p[1] or "" for p in places], dtype="U2"),
            np.array([-1 if p[2] is None else p[2] for p in places], dtype=np.int64),
            np.array([0 if p[3] is None else p[3] for p in places], dtype=np.uint64),
        )

    def place(self, i: int) -> RawPlace:
        reason = int(self.reason[i])
        geoname = int(self.geoname[i])
        return (
            self.reasons[reason - 1] if reason else None,
            str(self.country[i]) or None,
            geoname if geoname >= 0 else None,
            int(self.cell[i]) or None,
            None,
        )


class RangeTable:
    """IPv4 address keys to raw places: starts[i] is where range i begins (ranges
    partition IPv4 space), ids[i] indexes places. Special-purpose ranges (private,
    loopback, ...) are painted over the database's own networks, as in
    DatabaseLookup.resolve, which checks them first."""

    def __init__(
        self,
        starts: npt.NDArray[np.uint32],
        ids: npt.NDArray[np.int32],
        places: PlaceColumns,
    ) -> None:
        self.starts = starts
        self.ids = ids
        self.places = places

    def __len__(self) -> int:
        return len(self.starts)

    def place_ids(self, keys: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The place index of each IPv4 address key."""
        # Keys of the starts' own type: with any other, numpy would convert all the
        # starts (millions) to a common type on every call.
        at = np.searchsorted(self.starts, np.asarray(keys, dtype=self.starts.dtype), side="right")
        at -= 1
        return self.ids[at]

    def place(self, place_id: int) -> RawPlace:
        return self.places.place(place_id)

    # -- building ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        city_db: Path,
        decode: DecodeRecord,
        specials: Sequence[tuple[int, int, str]],
        not_found: RawPlace,
    ) -> RangeTable:
        """Walk the database's IPv4 tree (MaxMind DB spec, "Search Tree Section").

        specials: disjoint (first, last, anomaly) ranges that win over the database."""
        reader = maxminddb.open_database(str(city_db))
        try:
            meta = reader.metadata()
            node_count = int(meta.node_count)
            left, right = _children(city_db, node_count, int(meta.record_size))
            start_node = 0
            if int(meta.ip_version) == 6:  # IPv4 lives under ::/96
                for _ in range(96):
                    if start_node >= node_count:
                        break
                    start_node = int(left[start_node])
            net_starts, pointers = _leaves(left, right, start_node, node_count)
            order = np.argsort(net_starts, kind="stable")
            net_starts, pointers = net_starts[order], pointers[order]
            # Adjacent networks of one record are one range.
            keep = np.ones(len(pointers), dtype=bool)
            keep[1:] = pointers[1:] != pointers[:-1]
            net_starts, pointers = net_starts[keep], pointers[keep]
            distinct, first_at, record_ids = np.unique(
                pointers, return_index=True, return_inverse=True
            )
            places: list[RawPlace] = []
            for pointer, at in zip(distinct.tolist(), first_at.tolist(), strict=True):
                if pointer == node_count:  # no data for this network
                    places.append(not_found)
                else:  # any address of the network decodes to the same record
                    address = ipaddress.IPv4Address(int(net_starts[at]))
                    places.append(decode(reader.get(address)))
        finally:
            reader.close()
        return cls._with_specials(net_starts, record_ids.astype(np.int32), places, specials)

    @classmethod
    def _with_specials(
        cls,
        starts: npt.NDArray[Any],
        ids: npt.NDArray[np.int32],
        places: list[RawPlace],
        specials: Sequence[tuple[int, int, str]],
    ) -> RangeTable:
        special_lo: list[int] = []
        special_hi: list[int] = []
        special_id: list[int] = []
        for lo, hi, reason in sorted(specials):
            special_lo.append(lo)
            special_hi.append(hi)
            special_id.append(len(places))
            places.append((reason, None, None, None, None))
        lo_a = np.array(special_lo, dtype=np.int64)
        hi_a = np.array(special_hi, dtype=np.int64)
        bounds = np.concatenate([starts.astype(np.int64), lo_a, hi_a + 1])
        bounds = np.unique(bounds[bounds < _IPV4_SPACE])
        merged = ids[np.searchsorted(starts, bounds, side="right") - 1]
        # The special range each boundary falls in, if any (the ranges are disjoint).
        at = np.searchsorted(lo_a, bounds, side="right") - 1
        inside = (at >= 0) & (bounds <= hi_a[np.maximum(at, 0)])
        merged = np.where(inside, np.array(special_id, dtype=np.int32)[np.maximum(at, 0)], merged)
        keep = np.ones(len(merged), dtype=bool)
        keep[1:] = merged[1:] != merged[:-1]
        return cls(
            bounds[keep].astype(np.uint32), merged[keep].astype(np.int32), PlaceColumns.of(places)
        )

    # -- the cache file ------------------------------------------------------------------

    def save(self, path: Path) -> None:
        places = self.places
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a reader (another worker) never sees half a file.
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    starts=self.starts,
                    ids=self.ids,
                    reasons=np.array(places.reasons, dtype="U16"),
                    reason=places.reason,
                    country=places.country,
                    geoname=places.geoname,
                    cell=places.cell,
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> RangeTable:
        with np.load(path, allow_pickle=False) as z:
            places = PlaceColumns(
                [str(r) for r in z["reasons"].tolist()],
                z["reason"],
                z["country"],
                z["geoname"],
                z["cell"],
            )
            table = cls(z["starts"], z["ids"], places)
        n = len(places)
        if not (
            len(table.ids) == len(table.starts)
            and len(places.country) == len(places.geoname) == len(places.cell) == n
            and (not len(table.ids) or int(table.ids.max()) < n)
            and int(places.reason.max(initial=0)) <= len(places.reasons)
        ):
            raise ValueError("a malformed range table")
        return table

    @classmethod
    def for_database(
        cls,
        city_db: Path,
        decode: DecodeRecord,
        specials: Sequence[tuple[int, int, str]],
        not_found: RawPlace,
        cache_dir: Path | None = None,
    ) -> RangeTable:
        """The table of a database: read from the cache, or built and cached now."""
        directory = cache_dir or default_cache_dir()
        path = directory / f"ipv4-ranges-v{FORMAT_VERSION}-{file_digest(city_db)}.npz"
        try:
            table = cls.load(path)
            os.utime(path)  # used now: kept before tables not used lately
            return table
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as exc:
            log.warning("geolocation range table %s unreadable (%s): rebuilt", path, exc)
        # Seconds of CPU (8-17 s for GeoLite2 City), once per database file: said, so a
        # first start that pauses here is not taken for a hang.
        log.info(
            "building the IPv4 range table of %s (once per GeoIP database, about 10 s)",
            city_db.name,
        )
        started = time.perf_counter()
        table = cls.build(city_db, decode, specials, not_found)
        log.info(
            "IPv4 range table built in %.1f s: %d ranges, kept in %s",
            time.perf_counter() - started,
            len(table),
            directory,
        )
        try:
            table.save(path)
            _prune(directory)
        except OSError as exc:  # a read-only home: kept in memory for this process
            log.warning("geolocation range table not cached in %s (%s)", directory, exc)
        return table


def _prune(directory: Path) -> None:
    """Delete the tables (of any version) not used for KEEP_UNUSED_DAYS."""
    cutoff = time.time() - KEEP_UNUSED_DAYS * 86_400
    for f in directory.glob("ipv4-ranges-v*.npz"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except FileNotFoundError:  # pruned by another process meanwhile
            continue


def _children(
    city_db: Path, node_count: int, record_size: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Left and right child of every node, decoded from the search tree at once."""
    width = record_size // 4  # bytes per node
    with open(city_db, "rb") as f:
        raw = f.read(node_count * width)
    if len(raw) != node_count * width:
        raise ValueError("the search tree is truncated")
    b = np.frombuffer(raw, dtype=np.uint8).reshape(node_count, width).astype(np.int64)
    if record_size == 24:
        return (b[:, 0] << 16 | b[:, 1] << 8 | b[:, 2], b[:, 3] << 16 | b[:, 4] << 8 | b[:, 5])
    if record_size == 28:
        left = (b[:, 3] & 0xF0) << 20 | b[:, 0] << 16 | b[:, 1] << 8 | b[:, 2]
        right = (b[:, 3] & 0x0F) << 24 | b[:, 4] << 16 | b[:, 5] << 8 | b[:, 6]
        return left, right
    if record_size == 32:
        left = b[:, 0] << 24 | b[:, 1] << 16 | b[:, 2] << 8 | b[:, 3]
        right = b[:, 4] << 24 | b[:, 5] << 16 | b[:, 6] << 8 | b[:, 7]
        return left, right
    raise ValueError(f"unsupported record size {record_size}")


def _leaves(
    left: npt.NDArray[np.int64], right: npt.NDArray[np.int64], root: int, node_count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(network start, record pointer) of every leaf under root, one tree level at a time."""
    if root >= node_count:  # all of IPv4 is one record (or none)
        return np.array([0], dtype=np.int64), np.array([root], dtype=np.int64)
    starts_out: list[npt.NDArray[np.int64]] = []
    pointers_out: list[npt.NDArray[np.int64]] = []
    nodes = np.array([root], dtype=np.int64)
    starts = np.array([0], dtype=np.int64)
    for depth in range(32):
        bit = np.int64(1 << (31 - depth))
        child = np.concatenate([left[nodes], right[nodes]])
        child_start = np.concatenate([starts, starts | bit])
        leaf = child >= node_count
        starts_out.append(child_start[leaf])
        pointers_out.append(child[leaf])
        nodes, starts = child[~leaf], child_start[~leaf]
        if not len(nodes):
            break
    if len(nodes):  # a path 32 bits deep that is still inside the tree: a malformed file
        starts_out.append(starts)
        pointers_out.append(np.full(len(nodes), node_count, dtype=np.int64))
    return np.concatenate(starts_out), np.concatenate(pointers_out)


__all__ = [
    "FORMAT_VERSION",
    "KEEP_UNUSED_DAYS",
    "PlaceColumns",
    "RangeTable",
    "RawPlace",
    "default_cache_dir",
    "file_digest",
]
