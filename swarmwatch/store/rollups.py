"""Ingest-time rollups: the small tables every analysis query reads instead of sightings.

The writer calls apply_batch() once per batch, inside its transaction, after its peer upserts.

Grain and the trade-offs behind it
----------------------------------
Unique peers ("downloads", alpha60's estimate) are counted once per title, at the
place, day and vantage of the peer's *first* sighting (``new_peer``). Those counts
add up across days, places and titles, so rankings for any day-aligned window are
a sum over at most a few hundred thousand rows, never a scan of peers or sightings.
A window therefore means "peers first seen in the window" (downloads that started
then), and a vantage filter means "peers this vantage saw first".

Distinct *active* peers per frame do not add up across frames: a peer active in
two hours is one peer in the day. So frames are kept only at fixed intervals
(FRAME_INTERVALS: hourly and daily), each with its own distinct counts. The
interval is never finer than the sampling cadence: trackers are re-asked at least
every ``tracker_max_interval`` (30 min) and DHT lookups more often, so every
active peer has a chance to be seen in every hourly frame. A distinct count needs
to know whether a peer was already counted in the frame. The writer keeps a peer's
latest hour and day in its peer row (see apply_rows); ``rollup_presence`` keeps one
row per (title, interval, bucket, peer) for the frames a peer has moved on from
(and for every frame, when rollups are folded without the peer table), keyed by the
first 64 bits of the peer key (a collision merges two peers with probability
~n²/2⁶⁵, about 3·10⁻⁸ for a million peers in one hour; a peer new to its title is
never merged, as its presence is known to be new). Presence rows are never read by
queries.

A study-level answer is the sum over its titles: a person who downloads two
titles is two downloads, which is what the study counts.
"""

from __future__ import annotations

from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, repeat
from typing import Any, NamedTuple

from h3.api import basic_int as h3i
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    bindparam,
    cast,
    func,
    null,
    select,
    text,
    union,
    union_all,
)

from swarmwatch.sightings import AnonymousSighting
from swarmwatch.store.batch import SightingColumns, SightingRow
from swarmwatch.store.chunks import row_chunks
from swarmwatch.store.models import Base
from swarmwatch.store.packed import FrameCounts, merge_counts, pack, triples, unpack

#: Frame lengths with exact distinct counts: hourly for the time-lapse, daily for the series.
FRAME_INTERVALS: tuple[int, ...] = (3600, 86400)
#: H3 resolutions frames are served at (res 4 ≈ 1,770 km², a metro area; 3 and 5 zoom).
FRAME_RESOLUTIONS: tuple[int, ...] = (3, 4, 5)
#: H3 resolutions cell rankings are served at.
CELL_RESOLUTIONS: tuple[int, ...] = (2, 3, 4, 5, 6)
# Only the finest served resolution is stored; coarser cells are summed from it at query
# time (an H3 cell's parent chain is exact: parent(parent(c, 5), 4) == parent(c, 4)).
# One row per cell instead of one per resolution is most of the writer's rollup work.
#: The resolution rollup_frame rows are written at.
FRAME_STORED_RES = max(FRAME_RESOLUTIONS)
#: The resolution rollup_cell and rollup_cell_day rows are written at.
CELL_STORED_RES = max(CELL_RESOLUTIONS)
HOUR, DAY = FRAME_INTERVALS


class SourceEntries(NamedTuple):
    """Indexes of a batch's rows that bring a peer to a source (sources), or to a
    vantage (vantages), for the first time in its title: one row per (peer, source)
    and per (peer, vantage), its earliest in the batch."""

    sources: Sequence[int]
    vantages: Sequence[int]


class PeerFrames(NamedTuple):
    """A peer's presence before a batch, as the writer's peer upsert returns it: its
    latest hour and day, and the bitmaps of the frames it moved on from (bit i of
    hours0 is hour hour_base + i, of hours1 hour hour_base + 64 + i, of days day
    day_base + i; each base is the peer's first frame). Frames outside the bitmaps,
    and frames a peer moved on from within one batch, are rollup_presence rows."""

    hour: int
    day: int
    hour_base: int | None = None
    hours0: int = 0
    hours1: int = 0
    day_base: int | None = None
    days: int = 0

    def latest(self, at: int) -> int:
        return self.hour if at == 0 else self.day

    def in_bitmap(self, at: int, bucket: int) -> bool | None:
        """Whether the bitmaps hold the frame: None if it lies outside them."""
        if at == 0:
            if self.hour_base is None:
                return None
            i = bucket - self.hour_base
            if 0 <= i < 64:
                return bool(self.hours0 >> i & 1)
            if 64 <= i < 128:
                return bool(self.hours1 >> (i - 64) & 1)
            return None
        if self.day_base is None:
            return None
        i = bucket - self.day_base
        return bool(self.days >> i & 1) if 0 <= i < 64 else None


#: The prior frames of a peer new to its title: none (every bucket is after them).
NEW_PEER = PeerFrames(-1, -1)

_KW: dict[str, Any] = {"sqlite_with_rowid": False}  # clustered on the key: half the size


def _title_fk() -> Column[int]:
    return Column(
        "title_id",
        Integer,
        ForeignKey("title.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )


def _count(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, default=0)


def _rk(name: str) -> Column[int]:
    """The sum of the record keys (peer.record_key) of the peers a count counts: what the
    cell-key method derives a cell's noise from (DESIGN.md). Rows written before
    migration 0007_i17_store hold 0 for what they counted then."""
    return Column(name, BigInteger, nullable=False, default=0, server_default="0")


# Unique peers per place, all time. geoname_id 0: not placed at city level;
# country '': not placed at all (alpha60's "anomalies").
rollup_place = Table(
    "rollup_place",
    Base.metadata,
    _title_fk(),
    Column("geoname_id", Integer, primary_key=True, autoincrement=False),
    Column("country", String(2), primary_key=True),
    Column("metro_id", Integer, nullable=False, default=0),
    _count("peers"),
    _count("seeds"),
    _rk("peers_rk"),
    _rk("seeds_rk"),
    **_KW,
)

# The same by first-seen day and first vantage, for windows and vantage filters.
rollup_place_day = Table(
    "rollup_place_day",
    Base.metadata,
    _title_fk(),
    Column("day", Integer, primary_key=True, autoincrement=False),
    Column("vantage", String(100), primary_key=True),
    Column("geoname_id", Integer, primary_key=True, autoincrement=False),
    Column("country", String(2), primary_key=True),
    Column("metro_id", Integer, nullable=False, default=0),
    _count("peers"),
    _count("seeds"),
    _rk("peers_rk"),
    _rk("seeds_rk"),
    **_KW,
)

# Unique peers per H3 cell (rows at CELL_STORED_RES; databases written before that
# change also hold coarser rows, which queries ignore), all time and by day.
rollup_cell = Table(
    "rollup_cell",
    Base.metadata,
    _title_fk(),
    Column("res", Integer, primary_key=True, autoincrement=False),
    Column("h3_cell", BigInteger, primary_key=True, autoincrement=False),
    _count("peers"),
    _rk("peers_rk"),
    **_KW,
)
rollup_cell_day = Table(
    "rollup_cell_day",
    Base.metadata,
    _title_fk(),
    Column("day", Integer, primary_key=True, autoincrement=False),
    Column("vantage", String(100), primary_key=True),
    Column("res", Integer, primary_key=True, autoincrement=False),
    Column("h3_cell", BigInteger, primary_key=True, autoincrement=False),
    _count("peers"),
    _rk("peers_rk"),
    **_KW,
)

# Distinct active peers per frame: per cell, per city, and in total.
rollup_frame = Table(
    "rollup_frame",
    Base.metadata,
    _title_fk(),
    Column("interval_s", Integer, primary_key=True, autoincrement=False),
    Column("res", Integer, primary_key=True, autoincrement=False),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("h3_cell", BigInteger, primary_key=True, autoincrement=False),
    _count("peers"),
    _rk("peers_rk"),
    **_KW,
)
rollup_frame_city = Table(
    "rollup_frame_city",
    Base.metadata,
    _title_fk(),
    Column("interval_s", Integer, primary_key=True, autoincrement=False),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("geoname_id", Integer, primary_key=True, autoincrement=False),
    _count("peers"),
    _rk("peers_rk"),
    **_KW,
)
# Closed frames, packed: a frame's cells (at FRAME_STORED_RES) and cities as one blob each
# (store.packed), so a frame costs a few bytes per cell and city rather than a row each.
# rollup_frame and rollup_frame_city hold a frame's rows only while it is open (the latest
# FRAME_OPEN_BUCKETS of its title) and late sightings' rows until the next batch folds
# them in; a frame's counts are its blob plus its rows (frame_cells, frame_cities).
rollup_frame_packed = Table(
    "rollup_frame_packed",
    Base.metadata,
    _title_fk(),
    Column("interval_s", Integer, primary_key=True, autoincrement=False),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("cells", LargeBinary, nullable=False),
    Column("cities", LargeBinary, nullable=False),
)
rollup_active = Table(
    "rollup_active",
    Base.metadata,
    _title_fk(),
    Column("interval_s", Integer, primary_key=True, autoincrement=False),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    _count("peers"),
    _count("city_peers"),  # placed at a city: the rest of a frame is hidden in suppression
    _rk("peers_rk"),
    _rk("city_peers_rk"),
    **_KW,
)

# Sightings (not distinct) and new peers by day, source and vantage.
rollup_activity = Table(
    "rollup_activity",
    Base.metadata,
    _title_fk(),
    Column("day", Integer, primary_key=True, autoincrement=False),
    Column("source", String(16), primary_key=True),
    Column("vantage", String(100), primary_key=True),
    _count("sightings"),
    _count("new_peers"),
    _count("seed_sightings"),
    _rk("new_peers_rk"),
    # The record keys of the peers this row's source (vantage) reached for the first
    # time in the title: each peer's key once per source (vantage), so a source's (a
    # vantage's) sightings are perturbed by the sum over exactly the peers it saw.
    _rk("source_rk"),
    _rk("vantage_rk"),
    **_KW,
)

# Which peers are already counted in which frame (write-side only).
rollup_presence = Table(
    "rollup_presence",
    Base.metadata,
    _title_fk(),
    Column("interval_s", Integer, primary_key=True, autoincrement=False),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("peer_id", BigInteger, primary_key=True, autoincrement=False),
    **_KW,
)

# Peers of a title by how many stored sightings they have, for Chao1's f1 and f2
# (times 1 and 2). Kept by the writer from its peer upserts (add_peer_times), so no
# summary counts them over the peer table (a scan of every peer of the study).
rollup_peer_times = Table(
    "rollup_peer_times",
    Base.metadata,
    _title_fk(),
    Column("times", Integer, primary_key=True, autoincrement=False),
    _count("peers"),
    _rk("peers_rk"),
    **_KW,
)

ROLLUP_TABLES: tuple[Table, ...] = (
    rollup_place,
    rollup_place_day,
    rollup_cell,
    rollup_cell_day,
    rollup_frame,
    rollup_frame_city,
    rollup_frame_packed,
    rollup_active,
    rollup_activity,
    rollup_presence,
    rollup_peer_times,
)

#: The sighting counts rollup_peer_times keeps (Chao1 uses f1 and f2).
PEER_TIMES: tuple[int, ...] = (1, 2)
#: rollup_peer_times from the peer table itself, as 0005's backfill counted it (no
#: record-key sums then; rebuild_peer_times, for loaders of peer rows, keeps them).
PEER_TIMES_FROM_PEERS = (
    "INSERT INTO rollup_peer_times (title_id, times, peers)"
    " SELECT title_id, sightings, count(*) FROM peer WHERE sightings IN (1, 2)"
    " GROUP BY title_id, sightings"
)

#: Presence keys remembered per engine (≈ 60 bytes each): an hour of a million active peers.
PRESENCE_CACHE_LIMIT = 2_000_000


Key = tuple[Any, ...]


def peer_id(peer_key: bytes) -> int:
    """The first 64 bits of a peer key as a signed integer (compact presence key)."""
    return int.from_bytes(peer_key[:8], "big", signed=True)


@lru_cache(maxsize=1 << 18)
def parent_at(cell: int, res: int) -> int:
    """The cell's parent (or itself) at a resolution; cached, since cells repeat."""
    return cell if h3i.get_resolution(cell) == res else int(h3i.cell_to_parent(cell, res))


@lru_cache(maxsize=1 << 17)
def cell_parents(cell: int | None, resolutions: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(res, parent cell) for each resolution no finer than the cell itself.

    Cached: sightings come from a few tens of thousands of city points, so cells repeat.
    """
    if not cell:
        return ()
    own = h3i.get_resolution(cell)
    return tuple(
        (r, cell if r == own else h3i.cell_to_parent(cell, r)) for r in resolutions if r <= own
    )


def _check_dialect(conn: Connection) -> str:
    name = conn.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"rollups support SQLite and PostgreSQL, not {name}")
    return name


# Raw driver SQL on purpose: SQLAlchemy's per-row parameter processing cost more than
# the database work (≈ 40 µs a row), and the writer is what limits ingest (bench ingest).
# Both engines share the upsert syntax; PostgreSQL gets whole batches as arrays (unnest).
_PG_TYPES = {Integer: "int4", BigInteger: "int8", String: "text"}


def _pg_type(table: Table, col: str) -> str:
    return _PG_TYPES[type(table.c[col].type)]


def _add(
    conn: Connection,
    table: Table,
    key_cols: Sequence[str],
    increments: Mapping[Key, Sequence[int]],
    value_cols: Sequence[str],
    extra: Mapping[Key, Sequence[Any]] | None = None,
    extra_cols: Sequence[str] = (),
) -> None:
    """Add increments to counters, creating rows as needed (one statement per table)."""
    if not increments:
        return
    cols = [*key_cols, *value_cols, *extra_cols]
    rows = [
        (*key, *values, *(extra[key] if extra is not None else ()))
        for key, values in increments.items()
    ]
    update = ", ".join(f"{c} = {table.name}.{c} + excluded.{c}" for c in value_cols)
    head = f"INSERT INTO {table.name} ({', '.join(cols)}) "
    tail = f" ON CONFLICT ({', '.join(key_cols)}) DO UPDATE SET {update}"
    if _check_dialect(conn) == "postgresql":
        arrays = ", ".join(f"%s::{_pg_type(table, c)}[]" for c in cols)
        columns = [list(col) for col in zip(*rows, strict=True)]
        conn.exec_driver_sql(f"{head}SELECT * FROM unnest({arrays}){tail}", tuple(columns))
    else:
        # Multi-row VALUES: one statement step per chunk rather than one per row (each
        # step releases and retakes the GIL, which the pipeline's other thread wants).
        row_sql = "(" + ", ".join("?" * len(cols)) + ")"
        for start, stop in row_chunks(len(rows)):
            chunk = rows[start:stop]
            values = ", ".join([row_sql] * len(chunk))
            conn.exec_driver_sql(f"{head}VALUES {values}{tail}", tuple(chain.from_iterable(chunk)))


def _new_presence(conn: Connection, keys: list[Key], *, all_new: bool = False) -> list[Key]:
    """Insert presence keys; return those that were not there yet.

    all_new: the caller knows none is there (peers new to their title), so the rows
    are not returned one by one; a key that is there after all is left as it is.
    """
    if not keys:
        return []
    cols = "title_id, interval_s, bucket, peer_id"
    head = f"INSERT INTO rollup_presence ({cols}) "
    tail = " ON CONFLICT DO NOTHING" + ("" if all_new else f" RETURNING {cols}")
    if _check_dialect(conn) == "postgresql":
        columns = tuple(list(col) for col in zip(*keys, strict=True))
        sql = f"{head}SELECT * FROM unnest(%s::int4[], %s::int4[], %s::int4[], %s::int8[]){tail}"
        result = conn.exec_driver_sql(sql, columns)
        return keys if all_new else [tuple(r) for r in result.fetchall()]
    fresh: list[Key] = []
    for start, stop in row_chunks(len(keys)):
        chunk = keys[start:stop]
        values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        params = tuple(chain.from_iterable(chunk))
        result = conn.exec_driver_sql(f"{head}VALUES {values}{tail}", params)
        if not all_new:
            fresh.extend(map(tuple, result.fetchall()))
    return keys if all_new else fresh


class PresenceCache:
    """Presence rows known to be committed, so repeat sightings skip the database.

    Most sightings repeat a peer already counted in the current frame (peers
    re-announce every few minutes). A key enters the cache only when the
    transaction that wrote or met it commits (its owner, the writer, calls
    commit() or rollback() after each transaction), so a rolled-back batch can
    never make a later one skip a count; a committed presence row stays true
    whoever wrote it, so several writers may share a database. Memory is bounded:
    past ``limit`` keys, the frames that ended first are forgotten (a forgotten
    key costs one database probe, never a wrong count).
    """

    def __init__(self, limit: int = PRESENCE_CACHE_LIMIT) -> None:
        self.limit = limit
        self.size = 0
        # (title, interval, bucket) -> committed peer ids; read directly by apply_rows.
        self.frames: dict[tuple[int, int, int], set[int]] = {}
        self._pending: list[Key] = []

    def known(self, key: Key) -> bool:
        frame = self.frames.get(key[:3])
        return frame is not None and key[3] in frame

    def hold(self, keys: list[Key]) -> None:
        """Keys the current transaction wrote or met: known once it commits."""
        self._pending.extend(keys)

    def commit(self) -> None:
        pending, self._pending = self._pending, []
        for key in pending:
            frame = self.frames.setdefault(key[:3], set())
            if key[3] not in frame:
                frame.add(key[3])
                self.size += 1
        if self.size > self.limit:
            self._evict()

    def rollback(self) -> None:
        self._pending = []

    def _evict(self) -> None:
        # Frames that ended earliest first: late sightings for them are the rarest.
        for frame_key in sorted(self.frames, key=lambda f: (f[2] + 1) * f[1]):
            if self.size <= self.limit // 2:
                break
            self.size -= len(self.frames.pop(frame_key))


def apply_batch(
    conn: Connection, batch: list[AnonymousSighting], presence: PresenceCache | None = None
) -> None:
    """Fold one batch of AnonymousSightings into every rollup, in the caller's transaction.

    The writer calls apply_rows() with its row tuples instead (no object per row);
    this form is for callers that hold AnonymousSightings. A peer marked new_peer
    more than once in the batch is counted once. Without a presence cache (whose
    owner must commit it with the transaction), every presence key is asked of the
    database: slower, never wrong.
    """
    if not batch:
        return
    rows = SightingColumns.of(
        SightingRow(
            s.study_id,
            s.title_id,
            s.torrent_id,
            s.peer_key,
            s.seen_at,
            s.source,
            s.vantage,
            s.seed,
            s.country,
            s.geoname_id,
            s.metro_id,
            s.h3_cell,
            s.asn,
        )
        for s in batch
    )
    new: list[int] = []
    counted: set[tuple[int, bytes]] = set()
    for i, s in enumerate(batch):
        if s.new_peer and (s.title_id, s.peer_key) not in counted:
            counted.add((s.title_id, s.peer_key))
            new.append(i)
    apply_rows(conn, rows, new, presence or PresenceCache())


@lru_cache(maxsize=1 << 18)
def _stored_parent(cell: int, res: int) -> int | None:
    """The cell's parent at a stored resolution, or None if the cell is coarser than that."""
    if h3i.get_resolution(cell) < res:
        return None
    return parent_at(cell, res)


_NO_PEERS: frozenset[int] = frozenset()


def apply_rows(
    conn: Connection,
    rows: SightingColumns,
    new_rows: Iterable[int],
    presence: PresenceCache,
    record_keys: Sequence[int] | None = None,
    prior: Mapping[tuple[int, bytes], PeerFrames] | None = None,
    entries: SourceEntries | None = None,
) -> None:
    """Fold one writer batch into every rollup, in the caller's transaction.

    rows are the writer's batch (columns); new_rows are the indexes of the rows that
    first saw a peer new to its title, one per new peer. Everything is first summed
    per row key (column-wise, with Counters, which count in C), so each table gets
    one statement per batch
    with one row per distinct key: places, cells and frames repeat across a batch
    far more than peers do. record_keys are the rows' peers' record keys (0 for
    each when not given), summed beside every count. presence holds the frames'
    peers known to be committed; the keys this batch writes or meets are held in it
    until the caller's commit.

    prior (the writer's, from its peer upserts) holds each peer's latest hour and day
    before this batch (NEW_PEER for a peer new to its title; a peer without an entry
    is asked of rollup_presence). A peer's presence in its latest hour and day is
    kept in its peer row, not in a rollup_presence row: a frame later than the
    peer's latest is new for sure, its latest is counted already, and its row is
    written when the peer moves on to a later frame, so that a late sighting of an
    earlier frame is asked of rollup_presence as before. An all-unique stream
    writes no presence row at all.

    entries (the writer's, from the sources and vantages its peer upserts return) are
    the rows that bring a peer to a source, or to a vantage, for the first time: their
    record keys go to rollup_activity's source_rk and vantage_rk. Without them, each
    new peer's first row counts for its source and vantage.
    """
    if not rows:
        return
    frames_known = presence.frames
    hour_s, day_s = FRAME_INTERVALS
    n = len(rows)
    stamps = [x.timestamp() for x in rows.seen_at]
    titles = rows.title_id
    sources, vantages, seeds = rows.source, rows.vantage, rows.seed
    geonames, countries, metros_of, cells = (
        rows.geoname_id,
        rows.country,
        rows.metro_id,
        rows.h3_cell,
    )
    days = [int(ts // day_s) for ts in stamps]
    hours = [int(ts // hour_s) for ts in stamps]

    # Sightings, seed sightings and new peers by day, source and vantage.
    akeys = list(zip(titles, days, sources, vantages, strict=True))
    seen_n = Counter(akeys)
    seed_n = Counter([k for k, seed in zip(akeys, seeds, strict=True) if seed is True])
    new = sorted(set(new_rows))
    rks: Sequence[int] = record_keys if record_keys is not None else [0] * n
    new_n = Counter([akeys[i] for i in new])
    new_rk = _sum_by([akeys[i] for i in new], [rks[i] for i in new])
    if entries is None:
        entries = SourceEntries(new, new)
    source_rk = _sum_by([akeys[i] for i in entries.sources], [rks[i] for i in entries.sources])
    vantage_rk = _sum_by([akeys[i] for i in entries.vantages], [rks[i] for i in entries.vantages])
    activity = {
        k: (c, new_n[k], seed_n[k], new_rk.get(k, 0), source_rk.get(k, 0), vantage_rk.get(k, 0))
        for k, c in seen_n.items()
    }

    # Presence candidates: each (frame, peer) once, with the first row that has it,
    # less those the cache knows are committed already.
    pids = [int.from_bytes(k[:8], "big", signed=True) for k in rows.peer_key]
    candidates: dict[Key, int] = {}
    for interval, buckets in ((hour_s, hours), (day_s, days)):
        keys = list(zip(titles, repeat(interval), buckets, pids))
        first = dict(zip(reversed(keys), range(n - 1, -1, -1), strict=True))  # first row wins
        if any(frames_known.get(f) for f in set(zip(titles, repeat(interval), buckets))):
            first = {
                k: i for k, i in first.items() if k[3] not in frames_known.get(k[:3], _NO_PEERS)
            }
        candidates.update(first)

    # Unique peers by place, day and cell, at their first sighting.
    ntitles = [titles[i] for i in new]
    ndays = [days[i] for i in new]
    nvantages = [vantages[i] for i in new]
    ngeo = [geonames[i] or 0 for i in new]
    ncountry = [countries[i] or "" for i in new]
    pkeys = list(zip(ntitles, ngeo, ncountry, strict=True))
    dkeys = list(zip(ntitles, ndays, nvantages, ngeo, ncountry, strict=True))
    nseeds = [seeds[i] is True for i in new]
    nrks = [rks[i] for i in new]
    metros = [(metros_of[i] or 0,) for i in new]
    place = _with_seeds(pkeys, nseeds, nrks)
    place_day = _with_seeds(dkeys, nseeds, nrks)
    # The metro a place row is created with: that of its first sighting in the batch.
    metro = dict(zip(reversed(pkeys), reversed(metros), strict=True))
    metro_day = dict(zip(reversed(dkeys), reversed(metros), strict=True))
    res = CELL_STORED_RES
    parents = [_stored_parent(c, res) if (c := cells[i]) else None for i in new]
    celled = [j for j, p in enumerate(parents) if p is not None]
    cell = _counted([(ntitles[j], res, parents[j]) for j in celled], [nrks[j] for j in celled])
    cell_day = _counted(
        [(ntitles[j], ndays[j], nvantages[j], res, parents[j]) for j in celled],
        [nrks[j] for j in celled],
    )

    # Distinct active peers per frame: the candidates the database did not know either.
    # A peer new to its title has no presence row yet, so its keys are fresh without
    # asking the database (and without a RETURNING row each). A peer_id collision with
    # an older peer then counts both rather than merging them.
    presence.hold(list(candidates))
    if prior is None:
        new_peers = {(titles[i], pids[i]) for i in new}
        known: list[Key] = []
        first_seen: list[Key] = []
        for k in candidates:
            (first_seen if (k[0], k[3]) in new_peers else known).append(k)
        counted = _new_presence(conn, first_seen, all_new=True) + _new_presence(conn, known)
    else:
        counted = _counted_presence(conn, rows, hours, days, pids, candidates, prior)
    frames = [k[:3] for k in counted]
    at = [candidates[k] for k in counted]
    frks = [rks[i] for i in at]
    active_n = Counter(frames)
    active_rk = _sum_by(frames, frks)
    citied = [j for j, i in enumerate(at) if geonames[i]]
    city_frames = [frames[j] for j in citied]
    city_rks = [frks[j] for j in citied]
    city_n = Counter(city_frames)
    city_rk = _sum_by(city_frames, city_rks)
    active = {k: (c, city_n[k], active_rk[k], city_rk.get(k, 0)) for k, c in active_n.items()}
    frame_city = _counted([(*frames[j], geonames[at[j]]) for j in citied], city_rks)
    fres = FRAME_STORED_RES
    in_cells = [
        ((f[0], f[1], fres, f[2], p), rk)
        for f, i, rk in zip(frames, at, frks, strict=True)
        if (c := cells[i]) and (p := _stored_parent(c, fres)) is not None
    ]
    frame = _counted([k for k, _ in in_cells], [rk for _, rk in in_cells])

    add_increments(
        conn,
        RollupIncrements(
            activity=activity,
            place=place,
            place_metro=metro,
            place_day=place_day,
            place_day_metro=metro_day,
            cell=cell,
            cell_day=cell_day,
            frame=frame,
            frame_city=frame_city,
            active=active,
        ),
    )


@dataclass(slots=True)
class RollupIncrements:
    """What a batch adds to each rollup, summed per row key (the keys and values are the
    tables' own columns, in the order add_increments names them). apply_rows makes one
    from sightings; a loader that knows the sums already (bench query's synthetic study)
    hands one in, so both go through the same upserts and frame packing."""

    #: (title, day, source, vantage) -> (sightings, new peers, seed sightings, and the
    #: record-key sums new_peers_rk, source_rk, vantage_rk)
    activity: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    #: (title, geoname id, country) -> (peers, seeds, peers_rk, seeds_rk); its metro id
    place: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    place_metro: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    #: (title, day, vantage, geoname id, country) -> as place; its metro id
    place_day: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    place_day_metro: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    #: (title, res, cell) and (title, day, vantage, res, cell) -> (peers, peers_rk)
    cell: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    cell_day: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    #: (title, interval, res, bucket, cell) and (title, interval, bucket, geoname id)
    #: -> (peers, peers_rk): distinct peers newly counted in the frame
    frame: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    frame_city: Mapping[Key, Sequence[int]] = field(default_factory=dict)
    #: (title, interval, bucket) -> (peers, city_peers, peers_rk, city_peers_rk)
    active: Mapping[Key, Sequence[int]] = field(default_factory=dict)


def add_increments(conn: Connection, inc: RollupIncrements) -> None:
    """Add increments to every rollup (one statement per table), then pack the frames
    they closed, in the caller's transaction."""
    activity, place, metro = inc.activity, inc.place, inc.place_metro
    place_day, metro_day, cell, cell_day = (
        inc.place_day,
        inc.place_day_metro,
        inc.cell,
        inc.cell_day,
    )
    frame, frame_city, active = inc.frame, inc.frame_city, inc.active
    _add(
        conn,
        rollup_activity,
        ("title_id", "day", "source", "vantage"),
        activity,
        ("sightings", "new_peers", "seed_sightings", "new_peers_rk", "source_rk", "vantage_rk"),
    )
    place_key = ("title_id", "geoname_id", "country")
    with_seeds = ("peers", "seeds", "peers_rk", "seeds_rk")
    _add(conn, rollup_place, place_key, place, with_seeds, metro, ("metro_id",))
    _add(
        conn,
        rollup_place_day,
        ("title_id", "day", "vantage", "geoname_id", "country"),
        place_day,
        with_seeds,
        metro_day,
        ("metro_id",),
    )
    peers = ("peers", "peers_rk")
    _add(conn, rollup_cell, ("title_id", "res", "h3_cell"), cell, peers)
    _add(conn, rollup_cell_day, ("title_id", "day", "vantage", "res", "h3_cell"), cell_day, peers)
    _add(conn, rollup_frame, ("title_id", "interval_s", "res", "bucket", "h3_cell"), frame, peers)
    _add(
        conn,
        rollup_frame_city,
        ("title_id", "interval_s", "bucket", "geoname_id"),
        frame_city,
        peers,
    )
    _add(
        conn,
        rollup_active,
        ("title_id", "interval_s", "bucket"),
        active,
        ("peers", "city_peers", "peers_rk", "city_peers_rk"),
    )
    # A frame closes when a later one of its title gets counts (a new hour always does).
    latest: dict[tuple[int, int], int] = {}
    for title_id, interval, bucket in active:
        if bucket > latest.get((title_id, interval), bucket - 1):
            latest[(title_id, interval)] = bucket
    fold_closed_frames(conn, latest)


def _counted_presence(
    conn: Connection,
    rows: SightingColumns,
    hours: list[int],
    days: list[int],
    pids: list[int],
    candidates: dict[Key, int],
    prior: Mapping[tuple[int, bytes], PeerFrames],
) -> list[Key]:
    """The presence candidates that count a peer in a frame for the first time, with
    the peers' latest frames kept in their rows (see apply_rows): rows are written
    only for frames a peer has moved on from, and asked only for frames before a
    peer's latest."""
    # Each peer's latest hour and day in the batch, as ints (a list per peer would be
    # an object per peer for the garbage collector to track until the batch is done).
    keys = list(zip(rows.title_id, rows.peer_key, strict=True))
    pid_of = dict(zip(keys, pids, strict=True))
    latest_hour = dict(zip(keys, hours, strict=True))
    latest_day = dict(zip(keys, days, strict=True))
    if len(latest_hour) < len(keys):  # a peer with several rows: its latest frames
        for pk, hour, day in zip(keys, hours, days, strict=True):
            if hour > latest_hour[pk]:
                latest_hour[pk] = hour
            if day > latest_day[pk]:
                latest_day[pk] = day
    latest = (latest_hour, latest_day)
    fresh: list[Key] = []  # counted; the peer's latest frame now, so no row
    moved_on: list[Key] = []  # counted, and left within this batch: a row, known new
    ask: list[Key] = []  # before the peer's latest: counted if its row was not there
    for k, i in candidates.items():
        pk = keys[i]
        before = prior.get(pk)
        if before is None:
            ask.append(k)
            continue
        at = 0 if k[1] == HOUR else 1
        bucket = k[2]
        last = before.latest(at)
        if bucket > last:
            (moved_on if bucket < latest[at][pk] else fresh).append(k)
        elif bucket < last and not before.in_bitmap(at, bucket):
            ask.append(k)  # not in the bitmaps (or outside them): maybe a row
        # bucket == the peer's latest before: counted then, and kept when it moves on
    # The frames peers move on from in this batch that their bitmaps cannot hold (the
    # upsert set the bits of the others): rows, for late sightings.
    left: list[Key] = [
        (pk[0], interval, before.latest(at), pid_of[pk])
        for pk, before in prior.items()
        for at, interval in ((0, HOUR), (1, DAY))
        if 0 <= before.latest(at) < latest[at][pk]
        and before.in_bitmap(at, before.latest(at)) is None
    ]
    _new_presence(conn, left, all_new=True)
    return fresh + _new_presence(conn, moved_on, all_new=True) + _new_presence(conn, ask)


#: The latest frames of a title (per interval) whose counts stay rows: the open one, and
#: the one before it for sightings a crawl delivers a little late. Older frames are packed.
FRAME_OPEN_BUCKETS = 2


def fold_closed_frames(conn: Connection, latest: Mapping[tuple[int, int], int]) -> int:
    """Pack every frame of (title, interval) before the latest FRAME_OPEN_BUCKETS up to
    latest[(title, interval)] that has rows (closed frames, and late sightings' rows of
    frames packed before) into its blob, in the caller's transaction; the frames' rows go.
    Returns how many frames were packed."""
    f, c = rollup_frame, rollup_frame_city
    folded = 0
    for (title_id, interval), last in latest.items():
        below = last - FRAME_OPEN_BUCKETS + 1
        buckets = conn.execute(
            union(
                select(f.c.bucket).where(
                    f.c.title_id == title_id,
                    f.c.interval_s == interval,
                    f.c.res == FRAME_STORED_RES,
                    f.c.bucket < below,
                ),
                select(c.c.bucket).where(
                    c.c.title_id == title_id, c.c.interval_s == interval, c.c.bucket < below
                ),
            )
        ).scalars()
        for bucket in sorted(buckets):
            _fold_frame(conn, title_id, interval, bucket)
            folded += 1
    return folded


def _fold_frame(conn: Connection, title_id: int, interval: int, bucket: int) -> None:
    cells = frame_cells(conn, [title_id], interval, bucket)
    cities = frame_cities(conn, [title_id], interval, bucket).get(title_id, FrameCounts())
    key = {"t": title_id, "i": interval, "b": bucket}
    conn.execute(
        text(
            "INSERT INTO rollup_frame_packed (title_id, interval_s, bucket, cells, cities)"
            " VALUES (:t, :i, :b, :cells, :cities) ON CONFLICT (title_id, interval_s, bucket)"
            " DO UPDATE SET cells = excluded.cells, cities = excluded.cities"
        ),
        {**key, "cells": pack(cells), "cities": pack(cities)},
    )
    conn.execute(
        text(
            "DELETE FROM rollup_frame WHERE title_id = :t AND interval_s = :i AND res = :r"
            " AND bucket = :b"
        ),
        {**key, "r": FRAME_STORED_RES},
    )
    conn.execute(
        text(
            "DELETE FROM rollup_frame_city WHERE title_id = :t AND interval_s = :i AND bucket = :b"
        ),
        key,
    )


def _frame_parts(
    conn: Connection, rows: Table, key_col: str, blob_col: str, where: Sequence[Any]
) -> dict[int, FrameCounts]:
    """Per title, a frame's blob and rows summed. One statement, so one snapshot: a fold
    committed between two statements could otherwise hide rows or count them twice."""
    p = rollup_frame_packed
    blobs = select(
        p.c.title_id,
        p.c[blob_col],
        cast(null(), BigInteger),
        cast(null(), BigInteger),
        cast(null(), BigInteger),
    ).where(*[w(p) for w in where])
    counted = select(
        rows.c.title_id,
        cast(null(), LargeBinary),
        rows.c[key_col],
        rows.c.peers,
        rows.c.peers_rk,
    ).where(*[w(rows) for w in where])
    if rows is rollup_frame:
        counted = counted.where(rows.c.res == FRAME_STORED_RES)
    packed: dict[int, FrameCounts] = {}
    loose: defaultdict[int, list[tuple[int, int, int]]] = defaultdict(list)
    # .all(): one fetchall, not a fetchone per row (tens of thousands in an open frame).
    for title_id, blob, key, n, rk in conn.execute(union_all(blobs, counted)).all():
        if blob is not None:
            packed[title_id] = unpack(blob)  # one per title (the primary key)
        else:
            loose[title_id].append((int(key), int(n), int(rk)))
    out: dict[int, FrameCounts] = {}
    for t in sorted({*packed, *loose}):
        blob_counts, late = packed.get(t), loose.get(t)
        if late is None and blob_counts is not None:
            out[t] = blob_counts  # a closed frame is its blob alone (the common case)
            continue
        if blob_counts is None and late is not None:
            # An open frame is its rows alone, one per key: as they are if in key order.
            keys, peers, rks = zip(*late, strict=True)
            if list(keys) == sorted(set(keys)):
                out[t] = FrameCounts(array("q", keys), array("q", peers), array("q", rks))
                continue
        out[t] = merge_counts([triples(blob_counts or FrameCounts()), late or []])
    return out


def _frame_where(title_ids: Iterable[int], interval: int, bucket: int) -> list[Any]:
    ids = list(title_ids)
    return [
        lambda t: t.c.title_id.in_(bindparam("titles", ids, expanding=True)),
        lambda t: t.c.interval_s == interval,
        lambda t: t.c.bucket == bucket,
    ]


def frame_cells(
    conn: Connection, title_ids: Iterable[int], interval: int, bucket: int
) -> FrameCounts:
    """A frame's distinct active peers (and record-key sums) per H3 cell at
    FRAME_STORED_RES, summed over the titles: its blob and its rows."""
    parts = _frame_parts(
        conn, rollup_frame, "h3_cell", "cells", _frame_where(title_ids, interval, bucket)
    )
    if len(parts) == 1:
        return next(iter(parts.values()))
    return merge_counts(triples(counts) for counts in parts.values())


def frame_cities(
    conn: Connection, title_ids: Iterable[int], interval: int, bucket: int
) -> dict[int, FrameCounts]:
    """A frame's distinct active peers (and record-key sums) per city (GeoNames id), per
    title: its blob and its rows."""
    return _frame_parts(
        conn, rollup_frame_city, "geoname_id", "cities", _frame_where(title_ids, interval, bucket)
    )


def add_peer_times(conn: Connection, changes: Iterable[tuple[int, int, int, int]]) -> None:
    """Fold upserted peers, as (title_id, sightings before, sightings after, record key),
    into rollup_peer_times, in the caller's transaction. A new peer's "before" is 0."""
    delta: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    for title_id, before, after, rk in changes:
        if before in PEER_TIMES:
            d = delta[(title_id, before)]
            d[0] -= 1
            d[1] -= rk
        if after in PEER_TIMES:
            d = delta[(title_id, after)]
            d[0] += 1
            d[1] += rk
    _add(
        conn,
        rollup_peer_times,
        ("title_id", "times"),
        {k: (v[0], v[1]) for k, v in delta.items() if v[0] or v[1]},
        ("peers", "peers_rk"),
    )


def unique_peers(conn: Connection, title_ids: Iterable[int]) -> int:
    """Unique peers of titles, all time: each was new to its title once, so a sum over
    rollup_activity's days rather than a count over the peer table."""
    total = conn.execute(
        select(func.coalesce(func.sum(rollup_activity.c.new_peers), 0)).where(
            rollup_activity.c.title_id.in_(bindparam("titles", list(title_ids), expanding=True))
        )
    ).scalar_one()
    return int(total)


def rebuild_peer_times(conn: Connection) -> None:
    """rollup_peer_times counted afresh from the peer table (for direct peer loads), with
    the peers' record-key sums (without them f1 and f2 would get a constant noise)."""
    conn.exec_driver_sql("DELETE FROM rollup_peer_times")
    conn.exec_driver_sql(
        "INSERT INTO rollup_peer_times (title_id, times, peers, peers_rk)"
        " SELECT title_id, sightings, count(*), COALESCE(SUM(record_key), 0) FROM peer"
        " WHERE sightings IN (1, 2) GROUP BY title_id, sightings"
    )


def _with_seeds(
    keys: list[Key], seeds: list[bool], rks: list[int]
) -> dict[Key, tuple[int, int, int, int]]:
    """(peers, seeds, their record-key sums) per key."""
    seeded = [i for i, s in enumerate(seeds) if s]
    seeded_n = Counter([keys[i] for i in seeded])
    seeded_rk = _sum_by([keys[i] for i in seeded], [rks[i] for i in seeded])
    rk = _sum_by(keys, rks)
    return {k: (c, seeded_n[k], rk[k], seeded_rk.get(k, 0)) for k, c in Counter(keys).items()}


def _sum_by(keys: Sequence[Key], values: Sequence[int]) -> dict[Key, int]:
    """values summed per key."""
    # Every key made at once (in C), so the loop never meets a missing one: a
    # defaultdict's miss calls its factory, and most keys here are met once.
    out: dict[Key, int] = dict.fromkeys(keys, 0)
    for k, v in zip(keys, values, strict=True):
        out[k] += v
    return out


def _counted(keys: Sequence[Key], rks: Sequence[int]) -> dict[Key, tuple[int, int]]:
    """(count, record-key sum) per key."""
    rk = _sum_by(keys, rks)
    return {k: (c, rk[k]) for k, c in Counter(keys).items()}


__all__ = [
    "CELL_RESOLUTIONS",
    "CELL_STORED_RES",
    "FRAME_INTERVALS",
    "FRAME_RESOLUTIONS",
    "FRAME_OPEN_BUCKETS",
    "FRAME_STORED_RES",
    "HOUR",
    "NEW_PEER",
    "PEER_TIMES",
    "PEER_TIMES_FROM_PEERS",
    "PresenceCache",
    "PeerFrames",
    "RollupIncrements",
    "SourceEntries",
    "ROLLUP_TABLES",
    "add_increments",
    "add_peer_times",
    "apply_batch",
    "apply_rows",
    "cell_parents",
    "fold_closed_frames",
    "frame_cells",
    "frame_cities",
    "parent_at",
    "peer_id",
    "rebuild_peer_times",
    "rollup_active",
    "rollup_activity",
    "rollup_cell",
    "rollup_cell_day",
    "rollup_frame",
    "rollup_frame_city",
    "rollup_frame_packed",
    "rollup_peer_times",
    "rollup_place",
    "rollup_place_day",
    "rollup_presence",
    "unique_peers",
]
