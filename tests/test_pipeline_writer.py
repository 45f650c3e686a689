"""The batch writer on its own: retry classification and the uncertain-commit check."""

from __future__ import annotations

import random
import sqlite3
from datetime import timedelta

import h3
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from swarmwatch.pipeline.pipeline import write_failure_kind
from swarmwatch.store import Database
from swarmwatch.store.batch import SightingColumns, SightingRow
from swarmwatch.store.models import Peer
from swarmwatch.store.rollups import (
    frame_cells,
    frame_cities,
    rollup_activity,
    rollup_peer_times,
)
from swarmwatch.store.writer import BatchWriter, CommitUncertain, WriteBatch
from tests.pipeline_fixtures import INFOHASH, INFOHASH_B, T0, register


def test_failures_are_classified() -> None:
    gone = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    bad = sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("FOREIGN KEY"))
    assert write_failure_kind(gone) == "unavailable"
    assert write_failure_kind(CommitUncertain("OperationalError")) == "unavailable"
    assert write_failure_kind(bad) == "data"
    assert write_failure_kind(ValueError("a bug")) == "other"


LONDON_CELL = h3.str_to_int(h3.latlng_to_cell(51.5142, -0.0931, 7))


def batch_of(n: int, ids: dict[tuple[str, str], int]) -> WriteBatch:
    torrent = ids[("alpha", INFOHASH)]
    batch = WriteBatch()
    for i in range(n):
        key = i.to_bytes(16, "big")
        batch.sightings.append(
            SightingRow(
                1, 1, torrent, key, T0, "tracker", "v1", None, "GB", 2643743, None, None, None
            )
        )
    return batch


def test_peers_new_and_known_told_apart_without_a_read(db: Database) -> None:
    ids = register(db, ("alpha", [INFOHASH]))
    writer = BatchWriter(db.engine, rollups=False)
    assert writer.write(batch_of(3, ids)).new_peers == 3
    assert writer.write(batch_of(5, ids)).new_peers == 2  # 0-2 known, 3-4 new
    with db.session() as s:
        assert s.scalar(select(func.sum(Peer.sightings))) == 8


def test_a_batch_whose_commit_was_uncertain_is_not_written_twice(db: Database) -> None:
    ids = register(db, ("alpha", [INFOHASH]))
    writer = BatchWriter(db.engine, rollups=False)
    batch = batch_of(4, ids)
    writer.write(batch)
    batch.maybe_committed = True  # as if COMMIT had failed after the server applied it
    assert writer.write(batch).sightings == 4
    fresh = batch_of(6, ids)
    fresh.sightings = fresh.sightings[4:]
    fresh.maybe_committed = True  # uncertain, but in fact not stored: written now
    writer.write(fresh)
    with db.session() as s:
        assert s.scalar(select(func.sum(Peer.sightings))) == 6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_peer_times_follow_the_peer_table(db: Database, seed: int) -> None:
    """Chao1's f1 and f2 (peers seen once, twice) and the observed peers, as the writer
    keeps them in rollups, equal a count over the peer table after every batch: peers
    repeat within and across batches, in two titles."""
    ids = register(db, ("alpha", [INFOHASH]), ("beta", [INFOHASH_B]))
    torrents = {1: ids[("alpha", INFOHASH)], 2: ids[("beta", INFOHASH_B)]}
    writer = BatchWriter(db.engine)
    rng = random.Random(seed)
    at = T0
    for _ in range(6):
        batch = WriteBatch()
        for _ in range(rng.randrange(1, 60)):
            title = rng.choice((1, 2))
            at += timedelta(seconds=1)
            key = rng.randrange(40).to_bytes(16, "big")
            batch.sightings.append(
                SightingRow(
                    title,
                    title,
                    torrents[title],
                    key,
                    at,
                    "tracker",
                    "v1",
                    None,
                    "GB",
                    2643743,
                    None,
                    LONDON_CELL,
                    None,
                )
            )
        writer.write(batch)
        with db.engine.connect() as conn:
            direct = conn.execute(
                select(Peer.title_id, Peer.sightings, func.count())
                .where(Peer.sightings.in_((1, 2)))
                .group_by(Peer.title_id, Peer.sightings)
            ).all()
            kept = conn.execute(
                select(
                    rollup_peer_times.c.title_id,
                    rollup_peer_times.c.times,
                    rollup_peer_times.c.peers,
                ).where(rollup_peer_times.c.peers != 0)
            ).all()
            assert sorted(kept) == sorted(direct)
            observed = conn.execute(
                select(rollup_activity.c.title_id, func.sum(rollup_activity.c.new_peers)).group_by(
                    rollup_activity.c.title_id
                )
            ).all()
            peers = conn.execute(select(Peer.title_id, func.count()).group_by(Peer.title_id)).all()
            assert sorted(observed) == sorted(peers)
            # Record-key sums beside the counts: each peer's key once where it is counted.
            keys = dict(
                conn.execute(
                    select(Peer.title_id, func.sum(Peer.record_key)).group_by(Peer.title_id)
                ).all()
            )
            for table, column in (
                ("rollup_place", "peers_rk"),
                ("rollup_activity", "new_peers_rk"),
                ("rollup_cell", "peers_rk"),
            ):
                sums = conn.execute(
                    text(f"SELECT title_id, sum({column}) FROM {table} GROUP BY title_id")
                ).all()
                assert dict(sums) == keys, table
            few = conn.execute(
                select(Peer.sightings, func.sum(Peer.record_key))
                .where(Peer.sightings.in_((1, 2)))
                .group_by(Peer.sightings)
            ).all()
            kept_rk = conn.execute(
                text(
                    "SELECT times, sum(peers_rk) FROM rollup_peer_times GROUP BY times"
                    " HAVING sum(peers) > 0"
                )
            ).all()
            assert sorted(map(tuple, kept_rk)) == sorted(map(tuple, few))


def distinct_batch(n: int, ids: dict[tuple[str, str], int]) -> WriteBatch:
    """batch_of() with keys that differ in their first 64 bits (the presence key)."""
    batch = batch_of(n, ids)
    batch.sightings = SightingColumns.of(
        r._replace(peer_key=r.peer_key[::-1]) for r in batch.sightings
    )
    return batch


def test_a_rolled_back_batch_leaves_no_presence_known(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's own presence cache learns a frame's peers only from batches that
    committed: a batch that failed after its rollups ran is counted in full when it
    is written again, and a repeat after that costs no second count."""
    ids = register(db, ("alpha", [INFOHASH]))
    writer = BatchWriter(db.engine)
    first = distinct_batch(3, ids)
    writer.write(first)  # peers 0-2 are now known, committed, in T0's hour and day
    assert writer.presence.size == 6

    def fail(*_: object) -> None:
        raise RuntimeError("after the rollups")

    again = distinct_batch(5, ids)  # 0-2 repeat, 3-4 are new
    with monkeypatch.context() as m:
        m.setattr(writer, "_write_anomalies", fail)
        with pytest.raises(RuntimeError):
            writer.write(again)
    assert writer.presence.size == 6  # nothing of the failed batch was learned
    writer.write(again)
    writer.write(distinct_batch(5, ids))  # all repeats now: the cache knows every one
    with db.engine.connect() as conn:
        active = conn.execute(text("SELECT interval_s, peers FROM rollup_active")).all()
    assert sorted(active) == [(3600, 5), (86400, 5)]
    assert writer.presence.size == 10


@pytest.mark.parametrize(("seed", "hours"), [(1, 72), (2, 72), (3, 200), (4, 200)])
def test_frames_count_each_peer_once_per_frame_whatever_the_order(
    db: Database, seed: int, hours: int
) -> None:
    """Distinct active peers per hour and per day, as the writer keeps them, equal a
    brute-force count over every sighting written, after every batch: peers repeat
    within and across batches and hours, and sightings arrive out of order, within
    the presence bitmaps' 128 hours and beyond them."""
    ids = register(db, ("alpha", [INFOHASH]), ("beta", [INFOHASH_B]))
    torrents = {1: ids[("alpha", INFOHASH)], 2: ids[("beta", INFOHASH_B)]}
    writer = BatchWriter(db.engine)
    rng = random.Random(seed)
    written: list[SightingRow] = []
    for _ in range(8):
        batch = WriteBatch()
        for _ in range(rng.randrange(1, 80)):
            title = rng.choice((1, 2))
            # Mostly forward in time, sometimes hours late, over three days.
            at = T0 + timedelta(minutes=rng.randrange(0, hours * 60))
            key = bytes([rng.randrange(30)]) * 16
            row = SightingRow(
                title, title, torrents[title], key, at, "tracker", "v1", None,
                "GB", 2643743, None, LONDON_CELL, None,
            )  # fmt: skip
            batch.sightings.append(row)
        writer.write(batch)
        written.extend(batch.sightings)
        expected: dict[tuple[int, int, int], set[bytes]] = {}
        for r in written:
            for interval in (3600, 86400):
                bucket = int(r.seen_at.timestamp()) // interval
                expected.setdefault((r.title_id, interval, bucket), set()).add(r.peer_key)
        with db.engine.connect() as conn:
            active = conn.execute(
                text("SELECT title_id, interval_s, bucket, peers, city_peers FROM rollup_active")
            ).all()
            # Closed frames are packed, open ones rows: read as the frames query reads.
            frames = [
                (t, i, b, sum(frame_cells(conn, [t], i, b).peers)) for t, i, b, _, _ in active
            ]
        want = {k: len(v) for k, v in expected.items()}
        assert {(t, i, b): p for t, i, b, p, _ in active if p} == want
        assert {(t, i, b): c for t, i, b, _, c in active if c} == want
        assert {(t, i, b): int(p) for t, i, b, p in frames if p} == want
    # A writer that starts afresh (no cache: a restart) still counts nothing twice.
    again = BatchWriter(db.engine)
    batch = WriteBatch()
    batch.sightings.extend(written[:50])
    again.write(batch)
    with db.engine.connect() as conn:
        active = conn.execute(
            text("SELECT title_id, interval_s, bucket, peers FROM rollup_active")
        ).all()
    assert {(t, i, b): p for t, i, b, p in active if p} == want


def test_record_keys_are_drawn_as_the_cell_key_method_takes_them() -> None:
    from swarmwatch.analysis.cellkey import RECORD_KEY_MODULUS
    from swarmwatch.store.writer import RECORD_KEY_MASK
    from swarmwatch.store.writer import RECORD_KEY_MODULUS as DRAWN

    assert DRAWN == RECORD_KEY_MODULUS and RECORD_KEY_MASK == RECORD_KEY_MODULUS - 1


@pytest.mark.parametrize("seed", [4, 5])
def test_record_key_sums_follow_every_published_bucket(db: Database, seed: int) -> None:
    """The cell-key noise of a published count comes from its rollup's record-key sum:
    per hour and day (frames, the daily active series, each frame's city) that sum is
    the keys of exactly the peers active there, and per first-seen day (windows) of the
    peers first seen then, over batches where peers come back in later hours and days."""
    ids = register(db, ("alpha", [INFOHASH]))
    torrent = ids[("alpha", INFOHASH)]
    writer = BatchWriter(db.engine)
    rng = random.Random(seed)
    seen: list[tuple[bytes, int]] = []  # (peer key, seconds after T0)
    for hour in sorted(rng.sample(range(72), 8)):  # in time order, as crawls deliver them
        # A batch spans seconds, within one hour: the writer folds a peer's sightings
        # of one batch into one (its presence is per batch).
        batch = WriteBatch()
        for _ in range(rng.randrange(5, 40)):
            # Keys that differ in their first 64 bits, as keyed hashes do (the presence key).
            key = rng.randrange(30).to_bytes(16, "little")
            offset = hour * 3600 + rng.randrange(60)
            seen.append((key, offset))
            batch.sightings.append(
                SightingRow(
                    1,
                    1,
                    torrent,
                    key,
                    T0 + timedelta(seconds=offset),
                    "tracker",
                    "v1",
                    None,
                    "GB",
                    2643743,
                    None,
                    LONDON_CELL,
                    None,
                )  # fmt: skip
            )
        writer.write(batch)
    with db.engine.connect() as conn:
        record_key = dict(conn.execute(select(Peer.peer_key, Peer.record_key)).all())
        start = int(T0.timestamp())
        for interval in (3600, 86400):
            active: dict[int, set[bytes]] = {}
            for key, offset in seen:
                active.setdefault((start + offset) // interval, set()).add(key)
            want = {b: (len(ks), sum(record_key[k] for k in ks)) for b, ks in active.items()}
            got = conn.execute(
                text(
                    "SELECT bucket, sum(peers), sum(peers_rk) FROM rollup_active"
                    " WHERE interval_s = :i GROUP BY bucket HAVING sum(peers) > 0"
                ),
                {"i": interval},
            ).all()
            assert {b: (n, rk) for b, n, rk in got} == want, interval
            # Each frame's cities (packed once closed, rows while open) hold the same.
            cities = {}
            for b in want:
                counts = frame_cities(conn, [1], interval, b)[1]
                cities[b] = (sum(counts.peers), sum(counts.rks))
            assert cities == want, interval
            cells = {}
            for b in want:
                counts = frame_cells(conn, [1], interval, b)
                cells[b] = (sum(counts.peers), sum(counts.rks))
            assert cells == want, interval
        first: dict[bytes, int] = {}
        for key, offset in seen:
            first[key] = min(first.get(key, offset), offset)
        by_day: dict[int, list[bytes]] = {}
        for key, offset in first.items():
            by_day.setdefault((start + offset) // 86400, []).append(key)
        want_days = {d: (len(ks), sum(record_key[k] for k in ks)) for d, ks in by_day.items()}
        got_days = conn.execute(
            text(
                "SELECT day, sum(peers), sum(peers_rk) FROM rollup_place_day"
                " GROUP BY day HAVING sum(peers) > 0"
            )
        ).all()
        assert {d: (n, rk) for d, n, rk in got_days} == want_days
