"""Time-lapse frames: distinct active peers per H3 cell per frame, and each frame's top cities.

Read from the frame rollups; each published frame is cached, keyed by its own total.

Why the cache is exact: every peer newly counted in a frame raises that frame's
total (rollup_active.peers), and a frame's cells and cities change only then. So
the total is the version of a frame's content (swarmwatch.analysis.versioned):
closed frames never change and are always served from the cache, and the open
frame of a live study is served as last computed (at most a few seconds behind)
while one background thread recomputes it. A warm 120-frame time-lapse costs one
small query and a join of cached bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import h3
from h3.api import basic_int as h3i
from sqlalchemy import Connection, bindparam, func, select

from swarmwatch.analysis.disclosure import RULE, protect
from swarmwatch.analysis.rollups import (
    FRAME_INTERVALS,
    FRAME_RESOLUTIONS,
    FRAME_STORED_RES,
    parent_at,
    rollup_active,
    rollup_frame,
    rollup_frame_city,
)
from swarmwatch.analysis.scope import Scope, ScopeError
from swarmwatch.analysis.versioned import PerEngine
from swarmwatch.models import City

DEFAULT_TOP_CITIES = 10
NO_CELL = 0  # not an H3 index: the key of a frame's peers that have no cell
#: Published frames kept in memory (a frame at res 4 is ~10-400 KB of Python objects).
FRAME_CACHE_SIZE = 2_000


@dataclass(frozen=True, slots=True)
class Frame:
    t: str  # ISO start of the frame, UTC
    peers: int | None  # distinct active peers in the frame (None: below k)
    cells: list[dict[str, Any]]
    top_cities: list[dict[str, Any]]
    # The frame as compact JSON, made once: a warm time-lapse is then a join of bytes,
    # not a re-encoding of 120 frames of thousands of cells.
    encoded: bytes = field(default=b"", compare=False, repr=False)
    # The same, deflated on its own (see frames_gzip): compressing 120 frames per request
    # cost seconds at full scale; a cached piece per frame costs nothing.
    deflated: bytes = field(default=b"", compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "peers": self.peers,
            "cells": self.cells,
            "top_cities": self.top_cities,
        }


#: Published frames per engine, each versioned by its own total (see module docstring).
_frame_caches: PerEngine[Frame] = PerEngine(max_entries=FRAME_CACHE_SIZE)


def _check(scope: Scope, interval: int, res: int) -> None:
    if interval not in FRAME_INTERVALS:
        raise ScopeError(
            f"interval must be one of {FRAME_INTERVALS} seconds: frames hold exact distinct "
            "counts only at the intervals kept at ingest, never finer than the sampling cadence"
        )
    if res not in FRAME_RESOLUTIONS:
        raise ScopeError(f"res must be one of {FRAME_RESOLUTIONS}")
    if scope.vantage is not None:
        raise ScopeError("frames count peers across vantages; a vantage filter is not supported")


def compute_frames(
    conn: Connection,
    scope: Scope,
    *,
    interval: int = 3600,
    res: int = 4,
    top: int = DEFAULT_TOP_CITIES,
) -> dict[str, Any]:
    """The time-lapse: {interval, res, frames: [{t, peers, cells, top_cities}], method}."""
    frames, method = _frames(conn, scope, interval, res, top)
    return {
        "interval": interval,
        "res": res,
        "frames": [f.as_dict() for f in frames],
        "method": method,
    }


def frames_json(
    conn: Connection,
    scope: Scope,
    *,
    interval: int = 3600,
    res: int = 4,
    top: int = DEFAULT_TOP_CITIES,
) -> bytes:
    """compute_frames() as compact JSON, joined from each frame's cached encoding."""
    frames, method = _frames(conn, scope, interval, res, top)
    head = json.dumps({"interval": interval, "res": res}, separators=(",", ":"))[:-1]
    tail = json.dumps(method, separators=(",", ":"))
    return b"".join(
        (
            head.encode(),
            b',"frames":[',
            b",".join(f.encoded for f in frames),
            b'],"method":',
            tail.encode(),
            b"}",
        )
    )


def _deflate(data: bytes) -> bytes:
    """Raw deflate ending on a byte boundary (sync flush), not final: pieces concatenate."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


_GZIP_HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])  # RFC 1952: deflate, no name
_FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block closes the deflate stream


def frames_gzip(
    conn: Connection,
    scope: Scope,
    *,
    interval: int = 3600,
    res: int = 4,
    top: int = DEFAULT_TOP_CITIES,
) -> bytes:
    """frames_json() as one gzip member, assembled from each frame's cached deflate piece.

    Sync-flushed deflate pieces concatenate into one valid stream (RFC 1951); the
    gzip trailer's CRC-32 and size are over the whole uncompressed body.
    """
    frames, method = _frames(conn, scope, interval, res, top)
    head = json.dumps({"interval": interval, "res": res}, separators=(",", ":"))[:-1]
    plain: list[bytes] = [head.encode() + b',"frames":[']
    packed: list[bytes] = [_deflate(plain[0])]
    comma, comma_packed = b",", _deflate(b",")
    for i, frame in enumerate(frames):
        if i:
            plain.append(comma)
            packed.append(comma_packed)
        plain.append(frame.encoded)
        packed.append(frame.deflated)
    tail = b'],"method":' + json.dumps(method, separators=(",", ":")).encode() + b"}"
    plain.append(tail)
    packed.append(_deflate(tail))
    crc = 0
    size = 0
    for piece in plain:
        crc = zlib.crc32(piece, crc)
        size += len(piece)
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return b"".join((_GZIP_HEADER, *packed, _FINAL_BLOCK, trailer))


def _frames(
    conn: Connection, scope: Scope, interval: int, res: int, top: int
) -> tuple[list[Frame], dict[str, Any]]:
    _check(scope, interval, res)
    titles: Any = bindparam("titles", list(scope.title_ids), expanding=True)
    a = rollup_active
    where: list[Any] = [a.c.title_id.in_(titles), a.c.interval_s == interval]
    if scope.day_from is not None:
        where.append(a.c.bucket >= scope.day_from * 86400 // interval)
    if scope.day_to is not None:
        where.append(a.c.bucket < scope.day_to * 86400 // interval)
    totals = conn.execute(
        select(a.c.bucket, func.sum(a.c.peers), func.sum(a.c.city_peers))
        .where(*where)
        .group_by(a.c.bucket)
        .order_by(a.c.bucket)
    ).all()
    engine = conn.engine
    cache = _frame_caches.of(engine)
    frames: list[Frame] = []
    for bucket, total, city_total in totals:
        key = (scope.title_ids, interval, res, bucket, scope.k, top)

        def compute(b: int = bucket, n: int = int(total), c: int = int(city_total)) -> Frame:
            return _frame(conn, scope, interval, res, b, n, c, top)

        def refresh(b: int = bucket) -> tuple[Hashable, Frame]:
            # The open frame, recomputed off the request path from a fresh read.
            with engine.connect() as own:
                n, c = own.execute(
                    select(func.sum(a.c.peers), func.sum(a.c.city_peers)).where(
                        a.c.title_id.in_(titles), a.c.interval_s == interval, a.c.bucket == b
                    )
                ).one()
                return int(n), _frame(own, scope, interval, res, b, int(n), int(c), top)

        # A frame's total is its version: closed frames never change, so they are always
        # hits; the open one is served as last computed while ingest moves it on.
        frames.append(cache.get(key, int(total), compute, refresh).value)
    method = {
        **scope.describe(),
        "counting": "distinct peers active (seen at least once) in each frame, per title",
        "suppression": RULE,
    }
    return frames, method


def _frame(
    conn: Connection,
    scope: Scope,
    interval: int,
    res: int,
    bucket: int,
    total: int,
    city_total: int,
    top: int,
) -> Frame:
    k = scope.k
    titles: Any = bindparam("titles", list(scope.title_ids), expanding=True)
    f = rollup_frame
    # Stored at FRAME_STORED_RES only: a coarser cell is the sum of its children.
    cells: defaultdict[int, int] = defaultdict(int)
    for stored, n in conn.execute(
        select(f.c.h3_cell, func.sum(f.c.peers))
        .where(
            f.c.title_id.in_(titles),
            f.c.interval_s == interval,
            f.c.res == FRAME_STORED_RES,
            f.c.bucket == bucket,
        )
        .group_by(f.c.h3_cell)
    ):
        cells[parent_at(stored, res)] += int(n)
    # Peers with no cell are part of the published frame total but of no cell.
    nocell = total - sum(cells.values())
    groups: list[list[int]] = []
    if res - 1 in FRAME_RESOLUTIONS:
        by_parent: defaultdict[int, list[int]] = defaultdict(list)
        for cell in cells:
            by_parent[parent_at(cell, res - 1)].append(cell)
        groups = list(by_parent.values())
    counts = dict(cells)
    unpublished = {NO_CELL: nocell} if nocell > 0 else {}
    counts.update(unpublished)
    groups.append(list(counts))
    hidden = protect(counts, k, groups, unpublished=unpublished.keys())
    published = {c: n for c, n in cells.items() if c not in hidden}
    shown = sorted(published.items(), key=lambda cn: (-cn[1], cn[0]))
    t = datetime.fromtimestamp(bucket * interval, UTC).isoformat()
    peers = total if total >= k else None
    cell_list = [{"h3": h3.int_to_str(c), "peers": n} for c, n in shown]
    top_cities = (
        _top_cities(conn, scope, interval, res, bucket, total, city_total, top, published)
        if total >= k
        else []
    )
    encoded = json.dumps(
        {"t": t, "peers": peers, "cells": cell_list, "top_cities": top_cities},
        separators=(",", ":"),
    ).encode()
    return Frame(t, peers, cell_list, top_cities, encoded, _deflate(encoded))


def _top_cities(
    conn: Connection,
    scope: Scope,
    interval: int,
    res: int,
    bucket: int,
    total: int,
    city_total: int,
    top: int,
    cells: dict[int, int],
) -> list[dict[str, Any]]:
    """The frame's largest cities, with what is left of the frame kept k-anonymous.

    Candidates are each title's top cities (an index range scan, not a sort of all
    cities), summed exactly over the titles. The rest of the frame (total minus the
    shown cities) must hide behind >= k peers beyond its largest member, else the
    smallest shown city is withheld too.
    """
    k = scope.k
    t = rollup_frame_city
    candidates: set[int] = set()
    for title_id in scope.title_ids:
        candidates.update(
            conn.execute(
                select(t.c.geoname_id)
                .where(t.c.title_id == title_id, t.c.interval_s == interval, t.c.bucket == bucket)
                .order_by(t.c.peers.desc())
                .limit(top + 1)
            ).scalars()
        )
    if not candidates:
        return []
    ids: Any = bindparam("ids", sorted(candidates), expanding=True)
    rows = conn.execute(
        select(t.c.geoname_id, func.sum(t.c.peers), City.name, City.country, City.lat, City.lon)
        .select_from(t.outerjoin(City, City.geoname_id == t.c.geoname_id))
        .where(
            t.c.title_id.in_(bindparam("titles", list(scope.title_ids), expanding=True)),
            t.c.interval_s == interval,
            t.c.bucket == bucket,
            t.c.geoname_id.in_(ids),
        )
        .group_by(t.c.geoname_id, City.name, City.country, City.lat, City.lon)
    ).all()
    ranked = sorted(rows, key=lambda r: (-int(r[1]), r[0]))
    shown = [r for r in ranked[:top] if int(r[1]) >= k]
    rest_members = ranked[len(shown) :]
    nocity = total - city_total
    changed = True
    while changed and shown:
        changed = False
        rest = total - sum(int(r[1]) for r in shown)
        largest = max([int(r[1]) for r in rest_members[:1]] + [nocity])
        members = len(rest_members) + (nocity > 0)
        if rest > 0 and (members < 2 or rest - largest < k):
            rest_members.insert(0, shown.pop())
            changed = True
            continue
        in_cell: defaultdict[int, list[Any]] = defaultdict(list)
        for r in shown:
            if r[4] is not None and r[5] is not None:
                in_cell[h3i.latlng_to_cell(r[4], r[5], res)].append(r)
        for cell, members_shown in in_cell.items():
            cell_rest = cells.get(cell, 0) - sum(int(r[1]) for r in members_shown)
            if cell in cells and 0 < cell_rest < k:
                smallest = members_shown[-1]
                shown.remove(smallest)
                rest_members.insert(0, smallest)
                rest_members.sort(key=lambda r: (-int(r[1]), r[0]))
                changed = True
                break
    return [
        {
            "geoname_id": r[0],
            "name": r[2],
            "country": r[3],
            "lat": r[4],
            "lon": r[5],
            "peers": int(r[1]),
        }
        for r in shown
    ]


__all__ = ["DEFAULT_TOP_CITIES", "Frame", "compute_frames", "frames_gzip", "frames_json"]
