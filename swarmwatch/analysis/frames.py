"""Time-lapse frames: distinct active peers per H3 cell per frame, each frame's top cities,
and its top metro areas per capita (what the map's per-capita view draws).

Read from the frame rollups; each published frame is cached, keyed by its own total.

Why the cache is exact: every peer newly counted in a frame raises that frame's
total (rollup_active.peers), and a frame's cells and cities change only then. So
the total is the version of a frame's content (swarmwatch.analysis.versioned):
closed frames never change and are always served from the cache, and the open
frame of a live study is served as last computed (at most a few seconds behind)
while one background thread recomputes it. A warm 120-frame time-lapse costs one
small query and a join of cached bytes.

Two encodings of the same frames. The contract's (``{t, peers, cells: [{h3, peers}],
top_cities: [{...}]}`` per frame) repeats every cell id and key in every frame: 40 MB
for 120 hourly frames at alpha60's scale. The compact one (``format=compact``, what
the map page and the time-lapse export read) names each cell and city once:

    {"format": "compact", "interval": 3600, "res": 4,
     "cells": ["841f91dffffffff", ...],          # every published cell, by H3 index
     "cities": [{"geoname_id", "name", "country", "lat", "lon"}, ...],
     "metros": [{"id", "name", "country", "lat", "lon", "population"}, ...],
     "frames": [{"t": "2017-08-01T00:00:00+00:00", "peers": 1234,
                 "cell_gaps": [3, 1, 4, ...],    # indices into "cells", ascending,
                                                 # each the gap from the one before
                 "cell_peers": [40, 12, 9, ...], # parallel to cell_gaps
                 "city": [0, 5, ...],            # indices into "cities", by rank
                 "city_peers": [900, 400, ...],
                 "metro": [2, 0, ...],           # indices into "metros", by rate
                 "metro_peers": [60, 900, ...],  # rate = peers * 100,000 / population
                 "metro_ci_low": [1.2, ...],     # its 95 % interval, per 100,000
                 "metro_ci_high": [3.4, ...]}],
     "method": {...}}

Same numbers, same suppression: a cell, city or metro absent from a frame is
unpublished there (no peers, or withheld), exactly as in the contract's form.

Top metros are a frame's highest rates among metro areas of DEFAULT_MIN_POPULATION
or more, as the per-capita rankings give them: each metro's peers are the sum of its
cities', published through the cell key of their record keys (exact for owners), and
the interval is the rankings' (Wilson, widened by the noise for anyone but owners).
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import h3
from sqlalchemy import Connection, bindparam, func, select

from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.cellkey import BOUND, DEFAULT_TABLE, protected_rate
from swarmwatch.analysis.estimators import rate_per_100k
from swarmwatch.analysis.rankings import DEFAULT_MIN_POPULATION
from swarmwatch.analysis.scope import Scope, ScopeError
from swarmwatch.analysis.versioned import Versioned
from swarmwatch.store import Database
from swarmwatch.store.keptframes import COMPACT_BUCKET, OPEN_FRAMES, Kept, PersistedFrames
from swarmwatch.store.models import City, Metro
from swarmwatch.store.packed import FrameCounts, merge_counts, sum_triples, triples
from swarmwatch.store.rollups import (
    FRAME_INTERVALS,
    FRAME_RESOLUTIONS,
    frame_cells,
    frame_cities,
    rollup_active,
)

log = logging.getLogger(__name__)

DEFAULT_TOP_CITIES = 10


@dataclass(slots=True, eq=False)
class Frame:
    t: str  # ISO start of the frame, UTC
    peers: int | None  # distinct active peers in the frame (None: below k)
    cells: array[int]  # published H3 cells, ascending
    counts: array[int]  # their peers, parallel to cells
    top_cities: list[dict[str, Any]]
    top_metros: list[dict[str, Any]]  # highest per-capita rates (module docstring)
    # The contract's JSON of the frame, and the same deflated on its own (see
    # frames_gzip), made on first use: the map page reads the compact form, so a
    # cold time-lapse does not pay for encoding thousands of cell objects per frame.
    _encoded: bytes | None = None
    _deflated: bytes | None = None

    def cell_list(self) -> list[dict[str, Any]]:
        """The contract's cells: [{h3, peers}], most peers first (ties by index)."""
        shown = sorted(zip(self.cells, self.counts, strict=True), key=lambda cn: (-cn[1], cn[0]))
        return [{"h3": h3.int_to_str(c), "peers": n} for c, n in shown]

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "peers": self.peers,
            "cells": self.cell_list(),
            "top_cities": self.top_cities,
            "top_metros": self.top_metros,
        }

    def to_bytes(self) -> bytes:
        """The frame as store.keptframes keeps it: its cells and counts as int64 arrays
        after a JSON head, deflated."""
        head = json.dumps(
            {
                "t": self.t,
                "peers": self.peers,
                "n": len(self.cells),
                "top_cities": self.top_cities,
                "top_metros": self.top_metros,
            },
            separators=(",", ":"),
        ).encode()
        cells, counts = array("q", self.cells), array("q", self.counts)
        if sys.byteorder != "little":
            cells.byteswap()
            counts.byteswap()
        raw = struct.pack("<I", len(head)) + head + cells.tobytes() + counts.tobytes()
        return zlib.compress(raw, 1)

    @classmethod
    def from_bytes(cls, body: bytes) -> Frame:
        raw = zlib.decompress(body)
        (size,) = struct.unpack_from("<I", raw)
        head = json.loads(raw[4 : 4 + size])
        n = int(head["n"])
        cells, counts = array("q"), array("q")
        cells.frombytes(raw[4 + size : 4 + size + 8 * n])
        counts.frombytes(raw[4 + size + 8 * n : 4 + size + 16 * n])
        if sys.byteorder != "little":
            cells.byteswap()
            counts.byteswap()
        return cls(head["t"], head["peers"], cells, counts, head["top_cities"], head["top_metros"])

    @property
    def encoded(self) -> bytes:
        # Two threads may both encode a frame: the same bytes, so the race is harmless.
        if self._encoded is None:
            self._encoded = json.dumps(self.as_dict(), separators=(",", ":")).encode()
        return self._encoded

    @property
    def deflated(self) -> bytes:
        if self._deflated is None:
            self._deflated = _deflate(self.encoded)
        return self._deflated


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
    caches: AnalysisCaches | None = None,
) -> dict[str, Any]:
    """The time-lapse: {interval, res, frames: [{t, peers, cells, top_cities}], method}."""
    frames, method = _frames(conn, scope, interval, res, top, caches)
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
    caches: AnalysisCaches | None = None,
) -> bytes:
    """compute_frames() as compact JSON, joined from each frame's cached encoding."""
    frames, method = _frames(conn, scope, interval, res, top, caches)
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
    caches: AnalysisCaches | None = None,
) -> bytes:
    """frames_json() as one gzip member, assembled from each frame's cached deflate piece.

    Sync-flushed deflate pieces concatenate into one valid stream (RFC 1951); the
    gzip trailer's CRC-32 and size are over the whole uncompressed body.
    """
    frames, method = _frames(conn, scope, interval, res, top, caches)
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


@dataclass(frozen=True, slots=True)
class CompactFrames:
    """The compact time-lapse of one question, encoded once for the frames it was built from."""

    frames: tuple[Frame, ...]  # the cached frames it encodes (kept alive: see version)
    body: bytes  # compact JSON (see the module docstring)
    gzipped: bytes  # the same as one gzip member
    stale_since: datetime | None


def _intern(
    entry: dict[str, Any],
    fields: Sequence[str],
    index: dict[Hashable, int],
    table: list[dict[str, Any]],
) -> int:
    """The place of entry's `fields` in the compact form's table, added once on first sight."""
    key = tuple(entry[name] for name in fields)
    j = index.get(key)
    if j is None:
        j = index[key] = len(table)
        table.append({name: entry[name] for name in fields})
    return j


def compact_dict(
    frames: list[Frame], interval: int, res: int, method: dict[str, Any]
) -> dict[str, Any]:
    """The compact form (module docstring) of these frames, as Python objects."""
    union: set[int] = set()
    for frame in frames:
        union.update(frame.cells)
    cells = sorted(union)
    index = {c: i for i, c in enumerate(cells)}
    cities: list[dict[str, Any]] = []
    city_index: dict[Hashable, int] = {}
    metros: list[dict[str, Any]] = []
    metro_index: dict[Hashable, int] = {}
    out: list[dict[str, Any]] = []
    for frame in frames:
        at = list(map(index.__getitem__, frame.cells))  # ascending, as the cells are
        gaps = at[:1] + list(map(operator.sub, at[1:], at[:-1]))
        city_ids = [_intern(c, CITY_FIELDS, city_index, cities) for c in frame.top_cities]
        metro_ids = [_intern(m, METRO_FIELDS, metro_index, metros) for m in frame.top_metros]
        out.append(
            {
                "t": frame.t,
                "peers": frame.peers,
                "cell_gaps": gaps,
                "cell_peers": frame.counts.tolist(),
                "city": city_ids,
                "city_peers": [city["peers"] for city in frame.top_cities],
                "metro": metro_ids,
                "metro_peers": [metro["peers"] for metro in frame.top_metros],
                "metro_ci_low": [metro["ci_low"] for metro in frame.top_metros],
                "metro_ci_high": [metro["ci_high"] for metro in frame.top_metros],
            }
        )
    return {
        "format": "compact",
        "interval": interval,
        "res": res,
        "cells": [h3.int_to_str(c) for c in cells],
        "cities": cities,
        "metros": metros,
        "frames": out,
        "method": method,
    }


#: A city of the compact form's table (its peers are per frame).
CITY_FIELDS = ("geoname_id", "name", "country", "lat", "lon")
#: A metro of the compact form's table (its peers and interval are per frame).
METRO_FIELDS = ("id", "name", "country", "lat", "lon", "population")


def compute_compact_frames(
    conn: Connection,
    scope: Scope,
    *,
    interval: int = 3600,
    res: int = 4,
    top: int = DEFAULT_TOP_CITIES,
    caches: AnalysisCaches | None = None,
) -> dict[str, Any]:
    """The time-lapse in the compact form (module docstring), as Python objects."""
    frames, method = _frames(conn, scope, interval, res, top, caches)
    return compact_dict(frames, interval, res, method)


def frames_compact(
    conn: Connection,
    scope: Scope,
    *,
    interval: int = 3600,
    res: int = 4,
    top: int = DEFAULT_TOP_CITIES,
    between: Callable[[], None] | None = None,
    waiting: Callable[[], AbstractContextManager[None]] | None = None,
    caches: AnalysisCaches | None = None,
) -> CompactFrames:
    """The compact time-lapse as JSON and gzip, re-encoded only when a frame changed.

    The frames come from the frame cache (the open one of a live study is refreshed in
    the background at most every few seconds), so under ingest this encodes once per
    refresh of the open frame, and every other request is one small query.

    A caller that finds the same time-lapse being built (by the start-up warm-up, say)
    waits for that build inside `waiting()`, if given: a request passes
    caches.activity.set_aside, so the warm-up does not step aside for the very
    request that waits for it.

    Compact answers are versioned by the identity of the cached frames they encode: a
    frame object is replaced only when its frame is recomputed, and the answer keeps
    its own frames alive, so equal identities mean equal content.
    """
    key = (scope.title_ids, scope.day_from, scope.day_to, scope.k, scope.exact, interval, res, top)
    engine = conn.engine
    caches = caches or AnalysisCaches()
    with caches.building_lock:
        lock = caches.building.get(key)
        if lock is None:
            lock = caches.building[key] = threading.Lock()

    # The answer a server encoded before (store.keptframes), gzipped, by the frames' version.
    windowed = scope.day_from is not None or scope.day_to is not None
    persisted = None if windowed or not keeps_question(interval, res, top) else caches.persisted
    asked = persisted.question(("compact", key)) if persisted is not None else b""

    def encode(frame_set: FrameSet) -> CompactFrames:
        read_at = frame_set.stale_since or datetime.now(UTC)
        body = _dumps_in_pieces(compact_dict(frame_set.frames, interval, res, frame_set.method))
        gzipped = _gzip(body)
        if persisted is not None and frame_set.version:
            kept = Kept(frame_set.version, gzipped, read_at)
            persisted.save(engine, scope.study_id, asked, [(COMPACT_BUCKET, kept)])
        return CompactFrames(tuple(frame_set.frames), body, gzipped, frame_set.stale_since)

    def refresh() -> tuple[Hashable, CompactFrames]:
        with engine.connect() as own:
            frame_set = frame_set_of(own, scope, interval, res, top, caches=caches)
        return _identity(frame_set.frames), encode(frame_set)

    if not lock.acquire(blocking=False):
        with waiting() if waiting is not None else nullcontext():
            lock.acquire()
    try:
        frame_set = frame_set_of(conn, scope, interval, res, top, between, caches)
        version = _identity(frame_set.frames)
        cache = caches.compact.of(engine)
        if persisted is not None and not cache.has(key):
            found = persisted.load(conn, asked).get(COMPACT_BUCKET)
            if found is not None:
                body = zlib.decompress(found.body, 16 + zlib.MAX_WBITS)
                if found.version == frame_set.version:  # the same frames: the same answer
                    kept = CompactFrames(
                        tuple(frame_set.frames), body, found.body, frame_set.stale_since
                    )
                    cache.seed(key, version, kept, found.read_at)
                else:  # as kept, marked stale, re-encoded in the background (if recent)
                    kept = CompactFrames((), body, found.body, found.read_at)
                    cache.seed(key, found.version, kept, found.read_at)
        entry = cache.get(key, version, lambda: encode(frame_set), refresh)
    finally:
        lock.release()
    answer = entry.value
    if entry.version != version:
        # Served from before the latest frame change: fresh as of that encoding's read.
        since = min(filter(None, (answer.stale_since, entry.read_at)))
        answer = CompactFrames(answer.frames, answer.body, answer.gzipped, since)
    return answer


def _dumps_in_pieces(compact: dict[str, Any]) -> bytes:
    """json.dumps of the compact form, one frame at a time: the C encoder holds the GIL
    for a whole call, and one call over 120 frames (MBs at full scale) stalled every
    request thread for its duration while a background refresh re-encoded it."""
    dump = functools.partial(json.dumps, separators=(",", ":"))
    head = {key: value for key, value in compact.items() if key not in ("frames", "method")}
    pieces = [dump(head)[:-1], ',"frames":[']
    for i, frame in enumerate(compact["frames"]):
        pieces.append("," + dump(frame) if i else dump(frame))
    pieces.append('],"method":' + dump(compact["method"]) + "}")
    return "".join(pieces).encode()


def _identity(frames: list[Frame]) -> tuple[int, ...]:
    return tuple(id(frame) for frame in frames)


def keeps_question(interval: int, res: int, top: int) -> bool:
    """Whether a question's frames are kept in the database (store.keptframes).

    Only the map's questions are: hourly, res 4, the default list of top cities (what
    warm_frames builds at a server start), for every title or one, public or exact; a
    compact answer only without a window. That is at most (titles + 1) x 2 questions a
    study. Any other is computed on demand and cached in memory (bounded) only: keeping
    every question a client can ask (intervals x resolutions x 101 list lengths x
    windows) would let anyone who can read a public study grow the database without
    bound.
    """
    return interval == MAP_INTERVAL and res == MAP_RES and top == DEFAULT_TOP_CITIES


#: The map page's first question: hourly frames of H3 resolution 4.
MAP_INTERVAL = 3600
MAP_RES = 4
#: Studies whose default time-lapse is built at server start (the most recent first).
WARM_STUDIES = 8


class WarmUpStopped(Exception):
    """The warm-up was asked to stop between two frames (the server is stopping)."""


def warm_frames(
    db: Database,
    caches: AnalysisCaches,
    *,
    interval: int = MAP_INTERVAL,
    res: int = MAP_RES,
    studies: int = WARM_STUDIES,
    stop: threading.Event | None = None,
) -> None:
    """Build the default time-lapse (every title, hourly, res 4: what the map page asks
    first) of the most recent studies, so no visitor waits for a cold one.

    Run on a background thread at server start (swarmwatch.api.routes.analysis). At
    alpha60's scale a cold time-lapse is 120 frames of thousands of cells through
    suppression, seconds of CPU; a request arriving meanwhile waits for this build
    (frames_compact's per-question lock) instead of starting a second one. Once `stop`
    is set it ends at the next frame (WarmUpStopped), so a stopping server need not
    wait for a whole time-lapse.
    """
    from swarmwatch.analysis.scope import resolve_scope
    from swarmwatch.store.models import Study

    def between_frames() -> None:
        if stop is not None and stop.is_set():
            raise WarmUpStopped
        # Step aside for requests (at most 50 ms per frame), and let the owner settle
        # the frames built so far (a server keeps them out of full garbage collections,
        # whose pauses would stop those requests).
        caches.activity.wait_idle(0.05)
        caches.settle()

    started = time.perf_counter()
    with db.session() as session:
        recent = session.scalars(select(Study).order_by(Study.id.desc()).limit(studies)).all()
        for study in recent:
            scope = resolve_scope(session.connection(), study)
            if scope.title_ids:
                frames_compact(
                    session.connection(),
                    scope,
                    interval=interval,
                    res=res,
                    between=between_frames,
                    caches=caches,
                )
    caches.settle()  # the cache is long-lived: let its owner settle it
    log.debug(
        "time-lapse cache warm (%d studies) in %.1f s", len(recent), time.perf_counter() - started
    )


def keep_frames(db: Database, persisted: PersistedFrames, *, studies: int = WARM_STUDIES) -> None:
    """warm_frames() with one-off caches that keep what they build (persisted): the
    default time-lapse of the most recent studies goes into the database, where the next
    server start reads it back instead of computing it (19-29 s at alpha60's scale).

    `swarmwatch ingest` ends with it, so the first start of a server on freshly loaded
    data answers the map at once, as every later start does. Frames already kept at
    their current version are read, not computed again.
    """
    caches = AnalysisCaches(persisted=persisted)
    try:
        warm_frames(db, caches, studies=studies)
    finally:
        caches.close()


#: How often the warmed time-lapses are looked at again (as a visitor would).
KEEP_WARM_EVERY_S = 10.0


def keep_frames_warm(
    db: Database, caches: AnalysisCaches, stop: threading.Event, every: float = KEEP_WARM_EVERY_S
) -> None:
    """warm_frames() now, then again every `every` seconds until `stop` is set.

    Cached frames may lag the data by at most max_lag (versioned); one that nobody
    asked for while ingest went on is older than that and would be recomputed in the
    next visitor's request (the open frame, then the re-encoding: a second or more at
    alpha60's scale). Asking again every few seconds keeps each warmed answer
    refreshed in the background, as a steady stream of visitors would.
    """
    while True:
        try:
            warm_frames(db, caches, stop=stop)
        except WarmUpStopped:
            return
        except Exception:  # a failed warm-up only means the next visitor waits
            log.exception("warming the time-lapse cache failed")
        if stop.wait(every):
            return


#: The compact time-lapse's gzip level. It is compressed whole at every change of a frame
#: and at a server's first request: at alpha60's scale (6.6 MB) level 6 took 0.64 s of the
#: first frames after a start, level 2 takes 0.06 s for 15 % more bytes (1.89 MB, not 1.64).
COMPACT_GZIP_LEVEL = 2


def _gzip(data: bytes) -> bytes:
    """One gzip member (RFC 1952) of data, at COMPACT_GZIP_LEVEL."""
    compressor = zlib.compressobj(COMPACT_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@dataclass(frozen=True, slots=True)
class FrameSet:
    """The frames of one question as served: each from the cache, possibly a little old."""

    frames: list[Frame]
    method: dict[str, Any]
    # When the data behind the oldest frame served from before the latest change was
    # read (None: every frame counts the data as of this request).
    stale_since: datetime | None
    # What the frames are, across server starts (store.keptframes; b"": none kept).
    version: bytes = b""


def _frames(
    conn: Connection, scope: Scope, interval: int, res: int, top: int, caches: AnalysisCaches | None
) -> tuple[list[Frame], dict[str, Any]]:
    frame_set = frame_set_of(conn, scope, interval, res, top, caches=caches)
    return frame_set.frames, frame_set.method


def frame_set_of(
    conn: Connection,
    scope: Scope,
    interval: int,
    res: int,
    top: int,
    between: Callable[[], None] | None = None,
    caches: AnalysisCaches | None = None,
) -> FrameSet:
    """Every published frame of the scope (from the frame cache), and the method.

    `between` is called before each frame computed here (a warm-up pauses there for
    requests).
    """
    _check(scope, interval, res)
    titles: Any = bindparam("titles", list(scope.title_ids), expanding=True)
    a = rollup_active
    where: list[Any] = [a.c.title_id.in_(titles), a.c.interval_s == interval]
    if scope.day_from is not None:
        where.append(a.c.bucket >= scope.day_from * 86400 // interval)
    if scope.day_to is not None:
        where.append(a.c.bucket < scope.day_to * 86400 // interval)
    totals = conn.execute(
        select(a.c.bucket, func.sum(a.c.peers), func.sum(a.c.city_peers), func.sum(a.c.peers_rk))
        .where(*where)
        .group_by(a.c.bucket)
        .order_by(a.c.bucket)
    ).all()
    engine = conn.engine
    caches = caches or AnalysisCaches()
    cache = caches.frames.of(engine)
    metros = MetroLookup(conn)  # each city's metro asked once for all the frames computed here
    frames: list[Frame] = []
    stale_since: datetime | None = None
    # Frames a server computed before (store.keptframes), read on the first miss.
    persisted = caches.persisted if keeps_question(interval, res, top) else None
    question = (scope.title_ids, interval, res, scope.k, scope.exact, top)
    asked = persisted.question(question) if persisted is not None else b""
    kept: dict[int, Kept] | None = None
    to_keep: list[tuple[int, Kept]] = []
    served: list[tuple[int, Hashable]] = []
    newest = totals[-1][0] if totals else 0
    for bucket, total, city_total, total_rk in totals:
        key = (scope.title_ids, interval, res, bucket, scope.k, scope.exact, top)
        counts = (int(total), int(city_total), int(total_rk))
        if persisted is not None and not cache.has(key):
            if kept is None:
                kept = persisted.load(conn, asked)
            found = kept.get(bucket)
            if found is not None and found.version == persisted.version(conn, counts):
                cache.seed(key, int(total), Frame.from_bytes(found.body), found.read_at)
            elif found is not None and bucket > newest - OPEN_FRAMES:
                # An open frame as a previous server last computed it: served as that old
                # (if within the cache's lag) while it is recomputed in the background.
                cache.seed(key, found.version, Frame.from_bytes(found.body), found.read_at)

        def compute(
            b: int = bucket, n: int = counts[0], c: int = counts[1], rk: int = counts[2]
        ) -> Frame:
            if between is not None:
                between()  # only before real work: a cached frame costs nothing
            read_at = datetime.now(UTC)
            frame = _frame(conn, scope, interval, res, b, n, c, top, rk, metros)
            if persisted is not None:
                version = persisted.version(conn, (n, c, rk))
                to_keep.append((b, Kept(version, frame.to_bytes(), read_at)))
            return frame

        def refresh(b: int = bucket) -> tuple[Hashable, Frame]:
            # The open frame, recomputed off the request path from a fresh read.
            with engine.connect() as own:
                read_at = datetime.now(UTC)
                n, c, rk = own.execute(
                    select(
                        func.sum(a.c.peers), func.sum(a.c.city_peers), func.sum(a.c.peers_rk)
                    ).where(a.c.title_id.in_(titles), a.c.interval_s == interval, a.c.bucket == b)
                ).one()
                counted = (int(n), int(c), int(rk))
                frame = _frame(own, scope, interval, res, b, *counted[:2], top, counted[2])
                if persisted is not None:
                    version = persisted.version(own, counted)
                    persisted.save(
                        engine,
                        scope.study_id,
                        asked,
                        [(b, Kept(version, frame.to_bytes(), read_at))],
                    )
                return counted[0], frame

        # A frame's total is its version: closed frames never change, so they are always
        # hits; the open one is served as last computed while ingest moves it on.
        entry: Versioned[Frame] = cache.get(key, int(total), compute, refresh)
        if entry.version != int(total):
            stale_since = entry.read_at if stale_since is None else min(stale_since, entry.read_at)
        frames.append(entry.value)
        served.append((bucket, entry.version))
    if persisted is not None and to_keep:
        persisted.save(engine, scope.study_id, asked, to_keep)
    method = {
        **scope.describe(),
        "counting": "distinct peers active (seen at least once) in each frame, per title",
        "suppression": "none: the owner's exact read"
        if scope.exact
        else str(DEFAULT_TABLE.describe()["small_counts"]),
    }
    version = persisted.answer_version(conn, served) if persisted is not None else b""
    return FrameSet(frames, method, stale_since, version)


def _parent_mask(res: int) -> tuple[int, int]:
    """(keep, fill): a cell's parent at `res` is (cell & keep) | fill, which is what h3's
    cell_to_parent does (H3 index bit layout: resolution in bits 52-55, 3 bits per digit
    below it, set to 7 below the resolution)."""
    keep = ~(0xF << 52) & (2**63 - 1) & ~((1 << 3 * (15 - res)) - 1)
    fill = (res << 52) | ((1 << 3 * (15 - res)) - 1)
    return keep, fill


def _parent_of(cell: int, res: int) -> int:
    """A stored cell's parent at `res` (frames sum a coarser cell from its children)."""
    keep, fill = _parent_mask(res)
    return (cell & keep) | fill


def _frame(
    conn: Connection,
    scope: Scope,
    interval: int,
    res: int,
    bucket: int,
    total: int,
    city_total: int,
    top: int,
    total_rk: int,
    metros: MetroLookup | None = None,
) -> Frame:
    # Stored at FRAME_STORED_RES only: a coarser cell is the sum of its children.
    stored = frame_cells(conn, scope.title_ids, interval, bucket)
    keep, fill = _parent_mask(res)
    rows = sum_triples([(((cell & keep) | fill, n, rk) for cell, n, rk in triples(stored))])
    t = datetime.fromtimestamp(bucket * interval, UTC).isoformat()
    # Owners: every cell and city exact. Anyone else: each cell, city and the frame's
    # total perturbed by its own peers' record keys (analysis.cellkey), so no sum or
    # difference of them, across frames, resolutions or places, pins one down.
    published = {}
    for cell, (n, rk) in rows.items():
        value = scope.count(n, rk)
        if value:
            published[cell] = value
    shown = sorted(published)
    peers = scope.count(total, total_rk)
    cities = frame_cities(conn, scope.title_ids, interval, bucket) if peers else {}
    top_cities = _top_cities_perturbed(conn, scope, cities, top) if peers else []
    top_metros = _top_metros_per_capita(conn, scope, cities, top, metros) if peers else []
    return Frame(
        t,
        peers,
        array("q", shown),
        array("q", [published[c] for c in shown]),
        top_cities,
        top_metros,
    )


def _rounded(x: float) -> float:
    """A rate or interval end to 4 significant digits: the interval is far wider."""
    return float(f"{x:.4g}")


def _summed(cities: dict[int, FrameCounts], keys: set[int] | None = None) -> dict[int, list[int]]:
    """[peers, record-key sum] per city over the titles (only `keys`, if given)."""
    parts = (triples(counts) for counts in cities.values())
    if keys is None:
        return sum_triples(parts)
    return sum_triples((t for t in part if t[0] in keys) for part in parts)


#: Ids per lookup statement (well under SQLite's bound-parameter limit).
_LOOKUP_CHUNK = 2_000


class MetroLookup:
    """city -> (metro id, population) for cities in metros of DEFAULT_MIN_POPULATION or
    more, asked of the database once per city for all the frames of one request.

    Read through the city table (its metro ids are the current ones, as in the
    rankings). Two lookups by primary key rather than a join: with thousands of ids
    SQLite's planner turns a join into a scan of every metro (2 s a frame at 3,000
    cities, against 25 ms by key)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.known: dict[int, tuple[int, int] | None] = {}

    def _by_ids(self, select_sql: str, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """Rows of `select_sql` (its first column the table's key) for these keys."""
        if not ids:
            return []
        key = select_sql.split()[1].rstrip(",")
        if self.conn.dialect.name == "postgresql":
            result = self.conn.exec_driver_sql(f"{select_sql} WHERE {key} = ANY(%s)", (list(ids),))
        else:
            marks = ", ".join("?" * len(ids))
            result = self.conn.exec_driver_sql(f"{select_sql} WHERE {key} IN ({marks})", tuple(ids))
        return [tuple(r) for r in result.all()]  # fetchall: one driver call

    def __call__(self, gids: Sequence[int]) -> dict[int, tuple[int, int]]:
        missing = [g for g in gids if g not in self.known]
        for start in range(0, len(missing), _LOOKUP_CHUNK):
            chunk = missing[start : start + _LOOKUP_CHUNK]
            # Driver SQL: compiling an expanding IN of thousands of ids cost more than
            # the lookups themselves.
            metro_of = {
                int(gid): int(metro_id)
                for gid, metro_id in self._by_ids("SELECT geoname_id, metro_id FROM city", chunk)
                if metro_id is not None
            }
            population = {
                int(metro_id): int(pop)
                for metro_id, pop in self._by_ids(
                    "SELECT id, population FROM metro", sorted(set(metro_of.values()))
                )
                if pop is not None and pop >= DEFAULT_MIN_POPULATION
            }
            for gid in chunk:
                metro_id = metro_of.get(gid)
                pop = population.get(metro_id) if metro_id is not None else None
                self.known[gid] = (metro_id, pop) if metro_id is not None and pop else None
        out: dict[int, tuple[int, int]] = {}
        for gid in gids:
            found = self.known[gid]
            if found is not None:
                out[gid] = found
        return out


def _top_metros_per_capita(
    conn: Connection,
    scope: Scope,
    cities: dict[int, FrameCounts],
    top: int,
    metros: MetroLookup | None = None,
) -> list[dict[str, Any]]:
    """The frame's metro areas of DEFAULT_MIN_POPULATION or more with the highest rates,
    published as the per-capita rankings publish them (module docstring)."""
    if top <= 0 or not cities:
        return []
    # One title (the usual study): its counts as they are, already one per city.
    by_city = (
        next(iter(cities.values()))
        if len(cities) == 1
        else merge_counts(map(triples, cities.values()))
    )
    metro_of = (metros or MetroLookup(conn))(by_city.keys)
    sums: dict[int, list[int]] = {}
    population: dict[int, int] = {}
    for gid, n, rk in zip(by_city.keys, by_city.peers, by_city.rks, strict=True):
        found = metro_of.get(gid)
        if found is None:
            continue
        metro_id, population[metro_id] = found
        got = sums.get(metro_id)
        if got is None:
            sums[metro_id] = [n, rk]
        else:
            got[0] += n
            got[1] += rk
    rows = [(m, population[m], n, rk) for m, (n, rk) in sums.items()]
    # Only metros that could make the list are perturbed: a published count is within
    # BOUND of the true one, so none whose highest possible rate is below the top-th
    # lowest possible rate of those surely published (n - BOUND >= k) can.
    slack = 0 if scope.exact else BOUND
    sure = sorted(
        ((int(n) - slack) / int(pop) for _, pop, n, _ in rows if int(n) - slack >= scope.k),
        reverse=True,
    )
    floor = sure[top - 1] if len(sure) >= top else 0.0
    published = []
    for metro_id, pop, n, rk in rows:
        if (int(n) + slack) / int(pop) < floor:
            continue
        value = scope.count(int(n), int(rk))
        if value:  # else no peers, or withheld
            published.append((value, int(metro_id), int(pop)))
    # Ranked by the published rate; only the listed ones need their interval and name.
    published.sort(key=lambda m: (-m[0] / m[2], m[1]))
    listed = published[:top]
    if not listed:
        return []
    ids: Any = bindparam("ids", [m[1] for m in listed], expanding=True)
    names = {
        metro_id: (name, country, lat, lon)
        for metro_id, name, country, lat, lon in conn.execute(
            select(Metro.id, Metro.name, Metro.country, Metro.lat, Metro.lon).where(
                Metro.id.in_(ids)
            )
        )
    }
    out = []
    for value, metro_id, pop in listed:
        name, country, lat, lon = names[metro_id]
        rate = rate_per_100k(value, pop) if scope.exact else protected_rate(value, pop)
        if rate is not None:
            out.append(
                {
                    "id": metro_id,
                    "name": name,
                    "country": country,
                    "lat": lat,
                    "lon": lon,
                    "population": pop,
                    "peers": value,
                    "per_100k": _rounded(rate.per_100k),
                    "ci_low": _rounded(rate.ci_low),
                    "ci_high": _rounded(rate.ci_high),
                }
            )
    return out


def _top_cities_perturbed(
    conn: Connection, scope: Scope, cities: dict[int, FrameCounts], top: int
) -> list[dict[str, Any]]:
    """The frame's largest cities as this reader may see them (exact for owners,
    perturbed for anyone else), ranked by the published value.

    Candidates are each title's largest cities (ties at the cut included), with room
    for noise to reorder the last few; summed over the titles.
    """
    room = top + 2 * BOUND
    candidates: set[int] = set()
    for counts in cities.values():
        if len(counts) <= room:
            candidates.update(counts.keys)
        else:
            cut = sorted(counts.peers, reverse=True)[room - 1]
            candidates.update(
                gid for gid, n in zip(counts.keys, counts.peers, strict=True) if n >= cut
            )
    if not candidates:
        return []
    ids: Any = bindparam("ids", sorted(candidates), expanding=True)
    names = {
        int(gid): (name, country, lat, lon)
        for gid, name, country, lat, lon in conn.execute(
            select(City.geoname_id, City.name, City.country, City.lat, City.lon).where(
                City.geoname_id.in_(ids)
            )
        )
    }
    out: list[dict[str, Any]] = []
    for gid, (n, rk) in _summed(cities, candidates).items():
        value = scope.count(int(n), int(rk))
        if value:
            name, country, lat, lon = names.get(gid, (None, None, None, None))
            out.append(
                {
                    "geoname_id": gid,
                    "name": name,
                    "country": country,
                    "lat": lat,
                    "lon": lon,
                    "peers": value,
                }
            )
    out.sort(key=lambda c: (-c["peers"], c["geoname_id"]))
    return out[:top]


__all__ = [
    "CITY_FIELDS",
    "DEFAULT_TOP_CITIES",
    "METRO_FIELDS",
    "CompactFrames",
    "Frame",
    "FrameSet",
    "WarmUpStopped",
    "compact_dict",
    "compute_compact_frames",
    "compute_frames",
    "frame_set_of",
    "frames_compact",
    "frames_gzip",
    "frames_json",
    "MAP_INTERVAL",
    "MAP_RES",
    "keep_frames",
    "keeps_question",
    "keep_frames_warm",
    "warm_frames",
]
