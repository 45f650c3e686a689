"""The single batch writer: one transaction per batch of anonymous sightings.

Upserts the unique-peer table (one row per title and peer: a repeat sighting updates
its counters, it adds no row), adds anomaly counts, stores samples (and tracker
state), folds the batch into the analysis rollups, and notes the batch's token so a
retry after an uncertain commit can tell whether it is stored.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine

from swarmwatch.config import Settings, get_settings
from swarmwatch.sightings import AnonymousSighting, SampleRecord, Source
from swarmwatch.store.batch import ReplayMark, SightingColumns, SightingRow
from swarmwatch.store.chunks import row_chunks
from swarmwatch.store.rollups import (
    DAY,
    HOUR,
    NEW_PEER,
    PeerFrames,
    PresenceCache,
    SourceEntries,
    add_peer_times,
    apply_batch,
    apply_rows,
)

log = logging.getLogger(__name__)

ApplyRollups = Callable[[Connection, list[AnonymousSighting]], None]
#: The same, fed the writer's own columns and the indexes of new peers' first rows.
ApplyRows = Callable[
    [
        Connection,
        SightingColumns,
        list[int],
        PresenceCache,
        list[int],
        dict[tuple[int, bytes], PeerFrames],
        SourceEntries,
    ],
    None,
]

#: WAL pages between automatic checkpoints on the writer's SQLite connection (4 KiB each).
_WAL_CHECKPOINT_PAGES = 16_384
#: Set on the writer's SQLite connection before each batch (per connection, so they stay).
#: - cache_size: random 16-byte peer keys touch pages all over the peer index; 64 MiB
#:   of page cache keeps most of a million-peer index in memory.
#: - wal_autocheckpoint: a 5,000-row batch dirties ~4,000 pages (random keys again), so
#:   at SQLite's default of 1,000 WAL pages every commit was followed by a checkpoint
#:   that copied and fsynced them all. Checkpointing every ~64 MiB of WAL instead copies
#:   a page rewritten by several batches once (stage timing: -19 % write wall time).
WRITER_SQLITE_PRAGMAS = (
    "PRAGMA cache_size=-65536",
    f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}",
)

_PEER_COLUMNS = (
    "title_id, peer_key, study_id, first_seen, last_seen, country,"
    " geoname_id, metro_id, h3_cell, asn, seed, sightings, sources, vantages, record_key,"
    " last_hour, last_day, hour_base, day_base"
)
_PEER_COLUMNS_LIST = [c.strip() for c in _PEER_COLUMNS.split(",")]
_PEER_WIDTH = len(_PEER_COLUMNS_LIST)
#: An upsert row's (title, peer key).
_PEER_ORDER = itemgetter(0, 1)


# Counts add up and first/last widen, so a second writer racing this one loses nothing.
# One statement upserts a chunk of peers and RETURNS each one's count: a row that
# comes back with exactly the batch's count was inserted (an existing row had >= 1
# already), so new peers are known without a read before the write.
_UPSERT_PEER_HEAD = "INSERT INTO peer (" + _PEER_COLUMNS + ") VALUES "


def _leave(column: str, unit: str, first: int) -> str:
    """SET clause: the bit of the frame the peer leaves (its latest before this upsert,
    when a later one arrives), if that frame falls in this 64-frame word."""
    at = f"(peer.last_{unit} - peer.{unit}_base - {first})"
    return (
        f" {column} = CASE WHEN excluded.last_{unit} > peer.last_{unit}"
        f" AND {at} BETWEEN 0 AND 63"
        f" THEN peer.{column} | (CAST(1 AS BIGINT) << {at}) ELSE peer.{column} END,"
    )


_UPSERT_PEER_TAIL = (
    " ON CONFLICT (title_id, peer_key) DO UPDATE SET"
    " first_seen = CASE WHEN excluded.first_seen < peer.first_seen"
    " THEN excluded.first_seen ELSE peer.first_seen END,"
    " last_seen = CASE WHEN excluded.last_seen > peer.last_seen"
    " THEN excluded.last_seen ELSE peer.last_seen END,"
    " country = COALESCE(excluded.country, peer.country),"
    " geoname_id = COALESCE(excluded.geoname_id, peer.geoname_id),"
    " metro_id = COALESCE(excluded.metro_id, peer.metro_id),"
    " h3_cell = COALESCE(excluded.h3_cell, peer.h3_cell),"
    " asn = COALESCE(excluded.asn, peer.asn),"
    # seed: true once seen seeding, false once seen leeching, null while unknown.
    " seed = COALESCE(peer.seed OR excluded.seed, peer.seed, excluded.seed),"
    " sightings = peer.sightings + excluded.sightings,"
    " sources = peer.sources | excluded.sources,"
    " vantages = peer.vantages | excluded.vantages,"
    # (SET reads the row as it was: the sources and vantages before this upsert.)
    " prev_sources = peer.sources,"
    " prev_vantages = peer.vantages,"
    # The latest hour and day the peer is present in, and (SET reads the row as it
    # was) the ones before this upsert: presence in a peer's latest frames costs no
    # rollup_presence row (see rollups.apply_rows).
    " prev_hour = peer.last_hour,"
    " prev_day = peer.last_day,"
    # The frame a peer moves on from goes into its presence bitmaps (see PeerFrames).
    + _leave("hours0", "hour", 0)
    + _leave("hours1", "hour", 64)
    + _leave("days", "day", 0)
    + " hour_base = COALESCE(peer.hour_base, excluded.hour_base),"
    " day_base = COALESCE(peer.day_base, excluded.day_base),"
    " last_hour = CASE WHEN peer.last_hour IS NULL OR excluded.last_hour > peer.last_hour"
    " THEN excluded.last_hour ELSE peer.last_hour END,"
    " last_day = CASE WHEN peer.last_day IS NULL OR excluded.last_day > peer.last_day"
    " THEN excluded.last_day ELSE peer.last_day END"
    # record_key is never updated: it is the peer's for good (cell-key perturbation).
    " RETURNING title_id, peer_key, sightings, record_key, prev_sources, prev_vantages,"
    " prev_hour, prev_day, hour_base, hours0, hours1, day_base, days"
)
# Each batch notes its token; whether a commit went through is asked of it afterwards.
_NOTE_BATCH = "INSERT INTO write_batch (token, written_at) VALUES (?, ?)"
_PROBE_BATCH = "SELECT 1 FROM write_batch WHERE token = ?"
_PRUNE_BATCHES = "DELETE FROM write_batch WHERE written_at < ?"
_NOTE_REPLAY = (
    "INSERT INTO replay_progress (digest, bytes_read, lines, written_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (digest) DO NOTHING"
)
#: Batch tokens are kept this long: a batch retried after an uncertain commit is asked
#: about within seconds (at most the length of a database outage).
BATCH_TOKEN_DAYS = 7
#: Old tokens are deleted once every this many batches.
PRUNE_EVERY_BATCHES = 4096
_INSERT_VANTAGE = "INSERT INTO vantage (name) VALUES (?) ON CONFLICT (name) DO NOTHING"
_SELECT_VANTAGES = "SELECT id, name FROM vantage"
#: Record keys are uniform in [0, RECORD_KEY_MODULUS): the modulus of the cell-key method
#: (analysis.cellkey, which takes a cell's key as its record-key sum modulo it; a test
#: checks the two agree). A power of two, so a key is the low bits of a random word.
RECORD_KEY_MODULUS = 4096
RECORD_KEY_MASK = RECORD_KEY_MODULUS - 1
#: Vantages with a bit of their own in peer.vantages (a signed 64-bit integer); a
#: vantage registered after the 62nd shares the last bit.
VANTAGE_BITS = 63


def source_bit(source: str) -> int:
    """A source's bit in peer.sources (Source's members in declared order)."""
    return _SOURCE_BITS.get(source, _OTHER_SOURCE_BIT)


_SOURCE_BITS = {str(member): 1 << i for i, member in enumerate(Source)}
_OTHER_SOURCE_BIT = 1 << len(_SOURCE_BITS)


def sources_of(mask: int) -> set[str]:
    """The sources a peer.sources bitmask holds."""
    return {source for source, bit in _SOURCE_BITS.items() if mask & bit}


def vantage_bit(vantage_id: int) -> int:
    """The bit of a vantage (by its vantage.id, from 1) in peer.vantages."""
    return 1 << min(vantage_id - 1, VANTAGE_BITS - 1)


_UPSERT_ANOMALY = (
    "INSERT INTO anomaly (torrent_id, source, reason, study_id, count, first_seen, last_seen)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (torrent_id, source, reason) DO UPDATE SET"
    " count = anomaly.count + excluded.count,"
    " first_seen = CASE WHEN excluded.first_seen < anomaly.first_seen"
    " THEN excluded.first_seen ELSE anomaly.first_seen END,"
    " last_seen = CASE WHEN excluded.last_seen > anomaly.last_seen"
    " THEN excluded.last_seen ELSE anomaly.last_seen END"
)
_INSERT_SAMPLE = (
    "INSERT INTO sample (torrent_id, source, vantage, started_at, finished_at, tracker_url,"
    " peers_returned, seeders, leechers, error, known_peers)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_TRACKER_OK = (
    'UPDATE tracker SET last_announce = ?, next_announce = ?, "interval" = ?,'
    " min_interval = ?, seeders = ?, leechers = ?, failures = 0, last_error = NULL"
    " WHERE torrent_id = ? AND url = ?"
)
_TRACKER_FAILED = (
    "UPDATE tracker SET last_announce = ?, failures = failures + 1, last_error = ?"
    " WHERE torrent_id = ? AND url = ?"
)
_UPSERT_GEOIP = (
    "INSERT INTO geoip_database (kind, database_type, build_epoch, embedded, first_used_at,"
    " last_used_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, database_type, build_epoch) DO UPDATE SET"
    " last_used_at = excluded.last_used_at"
)


def draw_record_keys(n: int) -> array[int]:
    """n random words for new peer rows' record keys (masked to the cell-key modulus at
    insert); one function so a test can make a study's keys reproducible."""
    keys = array("l")
    keys.frombytes(os.urandom(keys.itemsize * n))
    return keys


@dataclass(slots=True)
class WriteBatch:
    """Everything one transaction writes. Holds no address: only keys and places."""

    sightings: SightingColumns = field(default_factory=SightingColumns)
    # (torrent_id, study_id, source, reason) -> [count, first_seen, last_seen]
    anomalies: dict[tuple[int, int, str, str], list[Any]] = field(default_factory=dict)
    samples: list[tuple[int, SampleRecord]] = field(default_factory=list)
    # Noted with the batch, in its transaction: a retry asks whether it is there.
    token: bytes = field(default_factory=lambda: os.urandom(16))
    # How far into a replayed file this batch's sightings reach (stored with them).
    mark: ReplayMark | None = None
    # Set when a commit of this batch failed in a way that leaves it unknown whether
    # the server applied it (the connection died during COMMIT): the retry asks first.
    maybe_committed: bool = False
    # The statements for `sightings`, made ahead by BatchWriter.prepare (or by write).
    prepared: PreparedRows | None = field(default=None, repr=False, compare=False)

    def add_anomaly(
        self, torrent_id: int, study_id: int, source: str, reason: str, seen_at: datetime
    ) -> None:
        entry = self.anomalies.get((torrent_id, study_id, source, reason))
        if entry is None:
            self.anomalies[(torrent_id, study_id, source, reason)] = [1, seen_at, seen_at]
            return
        entry[0] += 1
        if seen_at < entry[1]:
            entry[1] = seen_at
        if seen_at > entry[2]:
            entry[2] = seen_at

    def __bool__(self) -> bool:
        return bool(self.sightings or self.anomalies or self.samples or self.mark)


@dataclass(frozen=True, slots=True)
class PreparedRows:
    """Everything write() derives from a batch's sighting rows without the database.

    Pure Python work, so the pipeline does it in its prepare stage (BatchWriter.prepare)
    while the writer thread waits on the database with the GIL released.
    """

    rows: SightingColumns  # the batch these were made from (a changed one: made again)
    count: int
    # (statement, parameters) per peer upsert
    peer_statements: list[tuple[str, tuple[Any, ...]]]
    # Each row's (title, peer); each peer's (first row, sightings in the batch).
    keys: list[tuple[int, bytes]]
    peers: dict[tuple[int, bytes], tuple[int, int]]
    # Each row's source and vantage bit.
    source_bits: list[int]
    vantage_bits: list[int]
    # Peers with more than one row: {source bit: its earliest row}, {vantage bit: ...};
    # a peer with one row enters its source and vantage with that row.
    entries: dict[tuple[int, bytes], tuple[dict[int, int], dict[int, int]]]
    # Vantages of the rows this writer has no vantage.id for yet: write() registers
    # them and prepares again (their bits were left out).
    unknown_vantages: frozenset[str]

    def fits(self, rows: SightingColumns) -> bool:
        return self.rows is rows and self.count == len(rows)


@dataclass(frozen=True, slots=True)
class WriteResult:
    sightings: int
    new_peers: int
    anomalies: int
    samples: int


class CommitUncertain(Exception):
    """The connection failed during COMMIT: the batch may or may not be stored.

    Raised from the original error (its __cause__), which holds no address.
    """


class BatchWriter:
    """Writes WriteBatches; meant to be the only writer of sightings to its database.

    Statements go straight to the driver (executemany over tuples): the ORM's per-row
    work would cost more than SQLite's. Times are bound as SQLAlchemy would store
    them, so the ORM reads them back as aware UTC datetimes.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        settings: Settings | None = None,
        rollups: ApplyRollups | None | bool = True,
    ) -> None:
        self.engine = engine
        self.settings = settings or get_settings()
        self.sqlite = engine.dialect.name == "sqlite"
        # Frames' peers this writer knows are committed: kept across batches, so repeat
        # sightings skip the database (see PresenceCache); held and released here, with
        # each transaction.
        self.presence = PresenceCache()
        # vantage.id by name, for peer.vantages bits (learnt from the database, kept).
        self._vantage_ids: dict[str, int] = {}
        self._batches = 0
        # The built-in rollups take the rows as they are; any other callable gets one
        # AnonymousSighting per row.
        self._apply_rows: ApplyRows | None = None
        if rollups is True:
            self.rollups: ApplyRollups | None = apply_batch
            self._apply_rows = apply_rows
        elif rollups is False:
            self.rollups = None
        else:
            self.rollups = rollups

    # -- dialect glue ---------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.sqlite else statement.replace("?", "%s")

    def _time(self, value: datetime | None) -> Any:
        if value is None or not self.sqlite:
            return value
        # SQLAlchemy's SQLite storage format, "YYYY-MM-DD HH:MM:SS.ffffff": isoformat
        # of a UTC time is that plus "+00:00", several times cheaper than strftime.
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.isoformat(" ", "microseconds")[:26]

    def _connection_setup(self, conn: Connection) -> None:
        if self.sqlite:
            for pragma in WRITER_SQLITE_PRAGMAS:
                conn.exec_driver_sql(pragma)

    # -- the batch -----------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> WriteResult:
        """Write one batch in one transaction; on error nothing of it is kept.

        A failure before COMMIT leaves nothing behind, so the batch can simply be
        written again. A failure during COMMIT raises CommitUncertain and marks the
        batch; writing it again first checks whether its token is there (noted in
        the same transaction), and if so counts the batch as written instead of
        storing it twice.
        """
        prepared = self.prepare(batch)
        if prepared.unknown_vantages:
            self.learn_vantages(prepared.unknown_vantages)
            batch.prepared = None
            prepared = self.prepare(batch)
        with self.engine.connect() as conn:
            if batch.maybe_committed:
                stored = self._already_committed(conn, batch)
                conn.rollback()  # end the probe's implicit transaction
                if stored:
                    log.info("writer: a batch whose commit was uncertain is stored; not again")
                    return self._result(batch, 0)
            trans = conn.begin()
            try:
                self._connection_setup(conn)
                new_peers = self._write_sightings(conn, prepared)
                self._write_anomalies(conn, batch)
                self._write_samples(conn, batch.samples)
                self._note_batch(conn, batch)
            except BaseException:
                self.presence.rollback()
                trans.rollback()
                raise
            try:
                trans.commit()
            except Exception as exc:
                # Whether it is stored is unknown: forget its keys (a forgotten key costs
                # a probe, a wrongly known one would lose a count).
                self.presence.rollback()
                batch.maybe_committed = True
                raise CommitUncertain(type(exc).__name__) from exc
            self.presence.commit()
        return self._result(batch, new_peers)

    @staticmethod
    def _result(batch: WriteBatch, new_peers: int) -> WriteResult:
        return WriteResult(
            sightings=len(batch.sightings),
            new_peers=new_peers,
            anomalies=sum(v[0] for v in batch.anomalies.values()),
            samples=len(batch.samples),
        )

    def _already_committed(self, conn: Connection, batch: WriteBatch) -> bool:
        found = conn.exec_driver_sql(self._sql(_PROBE_BATCH), (batch.token,)).first()
        return found is not None

    def _note_batch(self, conn: Connection, batch: WriteBatch) -> None:
        now = datetime.now(UTC)
        conn.exec_driver_sql(self._sql(_NOTE_BATCH), (batch.token, self._time(now)))
        if batch.mark is not None:
            mark = batch.mark
            conn.exec_driver_sql(
                self._sql(_NOTE_REPLAY),
                (mark.digest, mark.bytes_read, mark.lines, self._time(now)),
            )
            if mark.ledger is not None:
                mark.ledger.write(conn, mark.position, self._sql)
        self._batches += 1
        if self._batches % PRUNE_EVERY_BATCHES == 0:
            cutoff = now - timedelta(days=BATCH_TOKEN_DAYS)
            conn.exec_driver_sql(self._sql(_PRUNE_BATCHES), (self._time(cutoff),))

    def learn_vantages(self, names: frozenset[str]) -> None:
        """Register vantages new to this writer (in a short transaction of their own:
        a vantage row is true whether or not the batch that brought it commits).

        The pipeline calls it from its prepare stage, so a batch prepared there need
        not be prepared again in the writer thread for want of a vantage's bit."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(self._sql(_INSERT_VANTAGE), [(name,) for name in sorted(names)])
            rows = conn.exec_driver_sql(_SELECT_VANTAGES).fetchall()
        self._vantage_ids.update({str(name): int(vid) for vid, name in rows})

    def prepare(self, batch: WriteBatch) -> PreparedRows:
        """The batch's statements, made once (kept in batch.prepared for retries)."""
        prepared = batch.prepared
        if prepared is None or not prepared.fits(batch.sightings):
            prepared = batch.prepared = self._prepare_rows(batch.sightings)
        return prepared

    def _prepare_rows(self, rows: SightingColumns) -> PreparedRows:
        n = len(rows)
        seen_at = rows.seen_at
        # Each row's time in storage form, once: peers refer to their rows' times.
        if self.sqlite:  # self._time, inlined: one call less per row
            times: list[Any] = [
                (x if x.tzinfo is UTC else x.astimezone(UTC)).isoformat(" ", "microseconds")[:26]
                for x in seen_at
            ]
        else:
            times = seen_at
        stamps = [int(x.timestamp()) for x in seen_at]
        vantage_ids = self._vantage_ids
        unknown = frozenset(set(rows.vantage) - vantage_ids.keys())
        vbit_of = {name: vantage_bit(vid) for name, vid in vantage_ids.items()}
        sbits = [_SOURCE_BITS.get(x, _OTHER_SOURCE_BIT) for x in rows.source]
        vbits = [vbit_of.get(x, 0) for x in rows.vantage]
        keys = list(zip(rows.title_id, rows.peer_key, strict=True))
        counts = Counter(keys)
        # A fixed random key per peer for the cell-key method (DESIGN.md): drawn for
        # every upserted row, kept only by the row that is inserted.
        record_keys = draw_record_keys(len(counts))
        hours = [x // HOUR for x in stamps]
        days = [x // DAY for x in stamps]
        single: range | list[int]
        if len(counts) == n:  # every row a peer of its own (the usual case): no folding
            single = range(n)
            multi: dict[tuple[int, bytes], list[Any]] = {}
        else:
            single = [i for i, k in enumerate(keys) if counts[k] == 1]
            multi = self._fold(rows, keys, counts, sbits, vbits)
        # One upsert row per peer (the columns of _PEER_COLUMNS):
        # (title, peer, study, first, last, country, geoname, metro, h3, asn, seed,
        #  sightings, sources, vantages, record key, last hour, last day, first hour, first day)
        cols = (
            rows.title_id, rows.peer_key, rows.study_id, times, times, rows.country,
            rows.geoname_id, rows.metro_id, rows.h3_cell, rows.asn, rows.seed,
        )  # fmt: skip
        if isinstance(single, range):
            peer_rows: list[tuple[Any, ...]] = list(
                zip(*cols, repeat(1), sbits, vbits, repeat(0), hours, days, hours, days)
            )
        else:
            peer_rows = [
                tuple(c[i] for c in cols) + (1, sbits[i], vbits[i], 0, hours[i], days[i])
                + (hours[i], days[i])
                for i in single
            ]  # fmt: skip
        for (title_id, key), (first, last, placed, seed, count, src, van, *_) in multi.items():
            peer_rows.append(
                (title_id, key, rows.study_id[placed], times[first], times[last])
                + tuple(c[placed] for c in cols[5:10])
                + (seed, count, src, van, 0, hours[last], days[last], hours[first], days[first])
            )
        # Sorted by key, so the B-tree inserts walk the index in order.
        peer_rows.sort(key=_PEER_ORDER)
        row_sql = "(" + ", ".join(["?"] * _PEER_WIDTH) + ")"
        peer_statements = []
        rk_at = _PEER_COLUMNS_LIST.index("record_key")
        for start, stop in row_chunks(len(peer_rows)):
            chunk = peer_rows[start:stop]
            params = list(chain.from_iterable(chunk))
            params[rk_at::_PEER_WIDTH] = [k & RECORD_KEY_MASK for k in record_keys[start:stop]]
            statement = _UPSERT_PEER_HEAD + ", ".join([row_sql] * len(chunk)) + _UPSERT_PEER_TAIL
            peer_statements.append((self._sql(statement), tuple(params)))
        peers = {k: (i, 1) for k, i in zip(keys, range(n), strict=True) if k not in multi}
        peers.update((k, (p[0], p[4])) for k, p in multi.items())
        entries = {k: (p[7], p[8]) for k, p in multi.items()}
        return PreparedRows(rows, n, peer_statements, keys, peers, sbits, vbits, entries, unknown)

    @staticmethod
    def _fold(
        rows: SightingColumns,
        keys: list[tuple[int, bytes]],
        counts: Counter[tuple[int, bytes]],
        sbits: list[int],
        vbits: list[int],
    ) -> dict[tuple[int, bytes], list[Any]]:
        """The peers with more than one row in the batch, folded:
        [first row, last row, row whose place is kept, seed, sightings, sources, vantages,
        {source bit: earliest row}, {vantage bit: earliest row}]"""
        seen_at, geoname_id, seeds = rows.seen_at, rows.geoname_id, rows.seed
        folded: dict[tuple[int, bytes], list[Any]] = {}
        for i, pk in enumerate(keys):
            if counts[pk] == 1:
                continue
            p = folded.get(pk)
            vbit = vbits[i]
            sbit = sbits[i]
            if p is None:
                folded[pk] = [i, i, i, seeds[i], 1, sbit, vbit, {sbit: i}, {vbit: i}]
                continue
            p[5] |= sbit
            p[6] |= vbit
            seen = seen_at[i]
            at = p[7].get(sbit)
            if at is None or seen < seen_at[at]:
                p[7][sbit] = i
            at = p[8].get(vbit)
            if at is None or seen < seen_at[at]:
                p[8][vbit] = i
            if seen < seen_at[p[0]]:
                p[0] = i
            if seen > seen_at[p[1]]:
                p[1] = i
            if geoname_id[i] is not None or geoname_id[p[2]] is None:
                p[2] = i
            if seeds[i] is not None and p[3] is not True:
                p[3] = seeds[i]
            p[4] += 1
        return folded

    def _write_sightings(self, conn: Connection, prepared: PreparedRows) -> int:
        rows = prepared.rows
        if not rows:
            return 0
        peers = prepared.peers
        new_rows: list[int] = []
        # (title, sightings before, after, record key) of each peer, for Chao1's f1 and f2.
        times: list[tuple[int, int, int, int]] = []
        # Each peer's record key as stored (a new peer's is the one just drawn).
        record_key: dict[tuple[int, bytes], int] = {}
        # Each peer's latest hour and day before this batch (see apply_rows).
        prior: dict[tuple[int, bytes], PeerFrames] = {}
        # On the driver's own cursor (the same connection and transaction): SQLAlchemy's
        # result wraps every RETURNING row in a Row object, and these return one per peer.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        returned = []
        try:
            for st, params in prepared.peer_statements:
                cursor.execute(st, params)
                returned.append(cursor.fetchall())
        finally:
            cursor.close()
        # The rows that bring a peer to a source or vantage it had not reached (see
        # rollups.SourceEntries): the sources and vantages the upsert saw before it.
        source_rows: list[int] = []
        vantage_rows: list[int] = []
        entries = prepared.entries
        sbits, vbits = prepared.source_bits, prepared.vantage_bits
        for (
            title_id,
            key,
            count,
            rk,
            was_src,
            was_van,
            prev_hour,
            prev_day,
            *bitmaps,
        ) in chain.from_iterable(returned):
            pk = (title_id, bytes(key))
            first, sightings = peers[pk]
            record_key[pk] = rk
            if sightings == 1:
                if not sbits[first] & was_src:
                    source_rows.append(first)
                if vbits[first] and not vbits[first] & was_van:
                    vantage_rows.append(first)
            else:
                src_firsts, van_firsts = entries[pk]
                source_rows += [at for bit, at in src_firsts.items() if not bit & was_src]
                vantage_rows += [at for bit, at in van_firsts.items() if bit and not bit & was_van]
            if count == sightings:
                new_rows.append(first)
                prior[pk] = NEW_PEER
            elif prev_hour is not None and prev_day is not None:
                prior[pk] = PeerFrames(prev_hour, prev_day, *bitmaps)
            # (a peer written before 0007_i17_store has no latest frames yet: it has no prior entry)
            if count <= 2 + sightings:  # it was seen at most twice before
                times.append((title_id, count - sightings, count, rk))
        if self._apply_rows is not None or self.rollups is not None:
            add_peer_times(conn, times)
        if self._apply_rows is not None:
            rks = list(map(record_key.__getitem__, prepared.keys))
            self._apply_rows(
                conn,
                rows,
                new_rows,
                self.presence,
                rks,
                prior,
                SourceEntries(source_rows, vantage_rows),
            )
        elif self.rollups is not None:
            new_set = set(new_rows)
            self.rollups(
                conn,
                [
                    AnonymousSighting(*r, new_peer=i in new_set)  # same fields, same order
                    for i, r in enumerate(rows)
                ],
            )
        return len(new_rows)

    def _write_anomalies(self, conn: Connection, batch: WriteBatch) -> None:
        if not batch.anomalies:
            return
        t = self._time
        conn.exec_driver_sql(
            self._sql(_UPSERT_ANOMALY),
            [
                (torrent, source, reason, study, v[0], t(v[1]), t(v[2]))
                for (torrent, study, source, reason), v in sorted(batch.anomalies.items())
            ],
        )

    def _next_announce(self, started: datetime, sample: SampleRecord) -> datetime:
        wanted = max(sample.interval or 0, sample.min_interval or 0)
        wait = min(
            max(float(wanted), self.settings.tracker_min_interval),
            self.settings.tracker_max_interval,
        )
        return started + timedelta(seconds=wait)

    def _write_samples(self, conn: Connection, samples: list[tuple[int, SampleRecord]]) -> None:
        if not samples:
            return
        t = self._time
        conn.exec_driver_sql(
            self._sql(_INSERT_SAMPLE),
            [
                (
                    torrent_id,
                    str(s.source),
                    s.vantage,
                    t(s.started_at),
                    t(s.finished_at),
                    s.tracker_url,
                    s.peers_returned,
                    s.seeders,
                    s.leechers,
                    s.error,
                    s.known_peers,
                )
                for torrent_id, s in samples
            ],
        )
        ok, failed = [], []
        for torrent_id, s in samples:
            if s.source != Source.TRACKER or not s.tracker_url:
                continue
            when = s.finished_at or s.started_at
            if s.error is None:
                ok.append(
                    (
                        t(when),
                        t(self._next_announce(when, s)),
                        s.interval,
                        s.min_interval,
                        s.seeders,
                        s.leechers,
                        torrent_id,
                        s.tracker_url,
                    )
                )
            else:
                failed.append((t(when), s.error, torrent_id, s.tracker_url))
        if ok:
            conn.exec_driver_sql(self._sql(_TRACKER_OK), ok)
        if failed:
            conn.exec_driver_sql(self._sql(_TRACKER_FAILED), failed)

    def record_geoip(self, kind: str, metadata: Any, *, embedded: bool) -> None:
        """Note that sightings are being placed with this database (kind: city or asn)."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                self._sql(_UPSERT_GEOIP),
                [
                    (
                        kind,
                        str(metadata.database_type)[:100],
                        int(metadata.build_epoch),
                        embedded,
                        self._time(now),
                        self._time(now),
                    )
                ],
            )


__all__ = [
    "BatchWriter",
    "CommitUncertain",
    "PreparedRows",
    "SightingRow",
    "WRITER_SQLITE_PRAGMAS",
    "WriteBatch",
    "WriteResult",
    "source_bit",
    "sources_of",
    "vantage_bit",
]
