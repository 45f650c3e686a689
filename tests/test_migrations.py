"""Alembic builds the models' schema exactly, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from h3.api import basic_int as h3i
from sqlalchemy import func, insert, inspect, select, text

from swarmwatch.analysis.frames import compute_frames
from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.analysis.summary import compute_summary
from swarmwatch.sightings import AnonymousSighting
from swarmwatch.store import Database
from swarmwatch.store.batch import SightingColumns, SightingRow
from swarmwatch.store.database import alembic_config, upgrade_database
from swarmwatch.store.models import Base, Peer, Sighting, Study, Title, Torrent, Vantage
from swarmwatch.store.rollups import (
    PEER_TIMES_FROM_PEERS,
    ROLLUP_TABLES,
    PresenceCache,
    apply_batch,
    apply_rows,
    rollup_activity,
)
from swarmwatch.store.writer import BatchWriter, WriteBatch, sources_of, vantage_bit


def test_upgrade_builds_the_models_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    tables = set(inspect(db.engine).get_table_names())
    assert {"study", "study_key", "torrent", "tracker", "sample", "sighting", "peer"} <= tables


def test_upgrade_is_idempotent(db: Database) -> None:
    db.upgrade()
    db.upgrade()
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None


def test_no_column_can_hold_an_address(db: Database) -> None:
    # The privacy model in the schema itself: no ip/address/port column anywhere.
    insp = inspect(db.engine)
    for table in insp.get_table_names():
        for col in insp.get_columns(table):
            name = col["name"].lower()
            assert name not in {"ip", "ip_address", "address", "addr", "port"}, (table, name)


def test_peer_times_are_backfilled_from_existing_peers(db_url: str) -> None:
    """0005 adds rollup_peer_times to a database with peers already in it: counted then."""
    db = Database(db_url)
    try:
        upgrade_database(db.engine, "0004")
        at = datetime(2026, 11, 27, tzinfo=UTC)
        with db.session() as s:
            # Core SQL: the model has columns later migrations add.
            s.execute(
                text(
                    "INSERT INTO study (id, name, description, k_threshold, private, created_at)"
                    " VALUES (1, 'before 0005', '', 5, false, '2026-11-27 00:00:00')"
                )
            )
            s.add(Title(id=1, study_id=1, name="t"))
            s.flush()
            s.execute(
                insert(Peer),
                [
                    dict(
                        title_id=1,
                        peer_key=bytes([i]) * 16,
                        study_id=1,
                        first_seen=at,
                        last_seen=at,
                        sightings=times,
                    )
                    for i, times in enumerate([1, 1, 1, 2, 2, 3, 7])
                ],
            )
        db.upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT times, peers FROM rollup_peer_times")).all()
            assert sorted(map(tuple, rows)) == [(1, 3), (2, 2)]
            assert conn.execute(select(Peer.title_id)).first() is not None
    finally:
        db.dispose()


def _frames_as_rows(db: Database) -> None:
    """A head-schema database's packed frames as rows again (0012's downgrade): the
    form every revision before 0012_i17f_query kept frames in."""
    from alembic import command

    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011_i17g_replay")


def _rollups_as_0005_wrote_them(
    sightings: list[AnonymousSighting], tmp_path: Path
) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    """The rollup rows of these sightings without the columns 0007_i17_store added: folded into a
    head-schema scratch database, then read back column by column."""
    scratch = Database(f"sqlite:///{tmp_path / 'scratch.db'}")
    try:
        scratch.upgrade()
        with scratch.engine.begin() as conn:
            conn.execute(text("PRAGMA foreign_keys=OFF"))
            apply_batch(conn, sightings)
        _frames_as_rows(scratch)
        out = {}
        with scratch.engine.connect() as conn:
            for table in ROLLUP_TABLES:
                if table.name not in inspect(conn).get_table_names():
                    continue
                cols = [c.name for c in table.c if not c.name.endswith("_rk")]
                rows = conn.execute(select(*[table.c[c] for c in cols])).all()
                out[table.name] = (cols, [tuple(r) for r in rows])
        return out
    finally:
        scratch.dispose()


def test_0007_keeps_a_database_with_sightings_and_its_answers(db_url: str, tmp_path: Path) -> None:
    """From the head before it, with peers, sightings and rollups in place:
    0007_i17_store gives each peer the sources and vantages its sightings had and a
    record key, keeps the sighting rows, leaves every analysis answer as it was, and
    the writer goes on from there."""
    db = Database(db_url)
    try:
        upgrade_database(db.engine, "0006_i15")  # the head before it
        at = datetime(2026, 11, 27, 10, tzinfo=UTC)
        with db.session() as s:
            s.add(Study(id=1, name="before 0007", k_threshold=1))
            s.flush()
            s.add(Title(id=1, study_id=1, name="t"))
            s.flush()
            s.add(Torrent(id=1, study_id=1, title_id=1, infohash_v1="a" * 40))
        seen = [  # (peer, source, vantage, minutes after `at`)
            (1, "tracker", "berlin", 0),
            (1, "dht", "berlin", 5),
            (1, "tracker", "tokyo", 70),
            (2, "swarm", "tokyo", 1),
            (3, "replay", "replay", 2),
        ]
        first: set[int] = set()
        sightings = []
        for n, source, vantage, minutes in seen:
            sightings.append(
                AnonymousSighting(
                    1,
                    1,
                    1,
                    bytes([n]) * 16,
                    at + timedelta(minutes=minutes),
                    source,
                    vantage,
                    None,
                    "GB",
                    2643743,
                    None,
                    None,
                    None,
                    new_peer=n not in first,
                )  # fmt: skip
            )
            first.add(n)
        with db.engine.begin() as conn:
            conn.execute(
                insert(Sighting),
                [
                    {k: getattr(a, k) for k in Sighting.__table__.c.keys() if k != "id"}
                    for a in sightings
                ],
            )
            conn.execute(
                insert(Peer),
                [
                    dict(
                        title_id=1,
                        peer_key=bytes([n]) * 16,
                        study_id=1,
                        first_seen=min(a.seen_at for a in sightings if a.peer_key[0] == n),
                        last_seen=max(a.seen_at for a in sightings if a.peer_key[0] == n),
                        country="GB",
                        geoname_id=2643743,
                        sightings=sum(1 for a in sightings if a.peer_key[0] == n),
                    )
                    for n in sorted(first)
                ],
            )
            for table, (cols, rows) in _rollups_as_0005_wrote_them(sightings, tmp_path).items():
                if rows:
                    marks = ", ".join(f":{c}" for c in cols)
                    conn.execute(
                        text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"),
                        [dict(zip(cols, row, strict=True)) for row in rows],
                    )
            conn.execute(text(PEER_TIMES_FROM_PEERS))

        def counts() -> dict[str, list[tuple[object, ...]]]:
            # The rollups' counts (not the record-key sums 0006 does not have yet): the
            # exact answers are functions of these alone.
            with db.engine.connect() as conn:
                return {
                    t.name: sorted(
                        tuple(r)
                        for r in conn.execute(
                            select(*[c for c in t.c if not c.name.endswith("_rk")])
                        )
                    )
                    for t in ROLLUP_TABLES
                    if t.name in inspect(conn).get_table_names()
                }

        def answers() -> tuple[object, ...]:
            with db.engine.connect() as conn:
                study = conn.execute(select(Study.__table__)).one()
                scope = resolve_scope(conn, study, exact=True)
                summary = compute_summary(conn, scope)
                ranking = compute_ranking(conn, scope, level="country")
                frames = compute_frames(conn, scope, interval=3600, res=4)
            for volatile in ("method", "estimate"):
                summary.pop(volatile, None)
            return summary, [r.peers for r in ranking.rows], frames["frames"]

        before = counts()
        # Rows as they were up to 0010 (0012 packs the frames' rows: its own test).
        upgrade_database(db.engine, "0010_i15c_privacy")
        assert counts() == before
        db.upgrade()
        summary, countries, frames = answers()
        assert isinstance(summary, dict) and summary["unique_peers"] == 3
        assert countries == [3] and isinstance(frames, list) and frames
        with db.engine.connect() as conn:
            names = dict(conn.execute(select(Vantage.name, Vantage.id)).all())
            assert set(names) == {"berlin", "tokyo", "replay"}
            peers = {
                row.peer_key[0]: row
                for row in conn.execute(select(Peer.peer_key, Peer.sources, Peer.vantages,
                                               Peer.record_key))
            }  # fmt: skip
            assert conn.execute(select(func.count()).select_from(Sighting)).scalar() == 5
        bit = {name: vantage_bit(vid) for name, vid in names.items()}
        assert sources_of(peers[1].sources) == {"tracker", "dht"}
        assert peers[1].vantages == bit["berlin"] | bit["tokyo"]
        assert sources_of(peers[2].sources) == {"swarm"} and peers[2].vantages == bit["tokyo"]
        assert sources_of(peers[3].sources) == {"replay"} and peers[3].vantages == bit["replay"]
        assert all(0 <= p.record_key < 4096 for p in peers.values())

        # The writer goes on: a repeat adds to its peer, a new vantage gets its own bit.
        writer = BatchWriter(db.engine)
        batch = WriteBatch()
        later = at + timedelta(hours=3)
        batch.sightings.append(
            SightingRow(1, 1, 1, bytes([2]) * 16, later, "tracker", "sydney",
                        None, "GB", 2643743, None, None, None)
        )  # fmt: skip
        assert writer.write(batch).new_peers == 0
        with db.engine.connect() as conn:
            sydney = conn.execute(select(Vantage.id).where(Vantage.name == "sydney")).scalar_one()
            row = conn.execute(
                select(Peer.sources, Peer.vantages, Peer.sightings, Peer.record_key).where(
                    Peer.peer_key == bytes([2]) * 16
                )
            ).one()
        assert sources_of(row.sources) == {"swarm", "tracker"}
        assert row.vantages == bit["tokyo"] | vantage_bit(sydney)
        assert row.sightings == 2 and row.record_key == peers[2].record_key
    finally:
        db.dispose()


def test_0010_backfills_the_record_key_sums_of_rollups_counted_before_0007(
    db_url: str, tmp_path: Path
) -> None:
    """Rollup rows counted from sighting rows (before 0007) held 0 record-key sums, so their
    noise was a constant. From the head before 0010, with such rows in place: 0010 gives
    every row the sum the writer would have kept, from the sighting rows that say which
    peers it counted, leaves every count as it was, and gives each source's and
    vantage's sightings the keys of exactly the peers it saw."""
    db = Database(db_url)
    try:
        upgrade_database(db.engine, "0009_i14_clients")
        at = datetime(2026, 11, 27, 10, tzinfo=UTC)
        berlin = h3i.latlng_to_cell(52.52, 13.40, 9)
        tokyo = h3i.latlng_to_cell(35.68, 139.69, 9)
        with db.session() as s:
            s.add(Study(id=1, name="before 0007", k_threshold=1))
            s.flush()
            s.add(Title(id=1, study_id=1, name="t"))
            s.flush()
            s.add(Torrent(id=1, study_id=1, title_id=1, infohash_v1="a" * 40))
        seen = [  # (peer, source, vantage, minutes after `at`, seed, placed in)
            (1, "tracker", "berlin", 0, None, (2950159, "DE", berlin)),
            (1, "dht", "berlin", 5, True, (2950159, "DE", berlin)),
            (1, "tracker", "tokyo", 70, True, (2950159, "DE", berlin)),
            (2, "swarm", "tokyo", 1, True, (1850147, "JP", tokyo)),
            (3, "replay", "replay", 2, False, (None, "JP", None)),
            (4, "tracker", "berlin", 1500, None, (None, None, None)),
            (2, "dht", "berlin", 1501, False, (1850147, "JP", tokyo)),
        ]
        first: set[int] = set()
        sightings = []
        for n, source, vantage, minutes, seed, (geo, country, cell) in seen:
            sightings.append(
                AnonymousSighting(1, 1, 1, bytes([n]) * 16, at + timedelta(minutes=minutes),
                                  source, vantage, seed, country, geo, None, cell, None,
                                  new_peer=n not in first)
            )  # fmt: skip
            first.add(n)
        record_keys = {1: 1111, 2: 2222, 3: 3333, 4: 4000}
        names = sorted({v for _, _, v, *_ in seen})
        vbit = {name: 1 << i for i, name in enumerate(names)}  # vantage ids 1, 2, ... by name
        sbit = {"tracker": 1, "dht": 2, "pex": 4, "swarm": 8, "replay": 16}
        with db.engine.begin() as conn:
            conn.execute(insert(Vantage), [{"id": i + 1, "name": n} for i, n in enumerate(names)])
            conn.execute(
                insert(Sighting),
                [
                    {k: getattr(a, k) for k in Sighting.__table__.c.keys() if k != "id"}
                    for a in sightings
                ],
            )
            mine = {n: [a for a in sightings if a.peer_key[0] == n] for n in first}
            conn.execute(
                text(
                    "INSERT INTO peer (title_id, peer_key, study_id, first_seen, last_seen,"
                    " sightings, sources, vantages, record_key) VALUES (1, :pk, 1, :first,"
                    " :last, :times, :sources, :vantages, :rk)"
                ),
                [
                    {
                        "pk": bytes([n]) * 16,
                        "first": min(a.seen_at for a in mine[n]),
                        "last": max(a.seen_at for a in mine[n]),
                        "times": len(mine[n]),
                        "sources": sum({sbit[a.source] for a in mine[n]}),
                        "vantages": sum({vbit[a.vantage] for a in mine[n]}),
                        "rk": record_keys[n],
                    }
                    for n in sorted(first)
                ],
            )
            for table, (cols, rows) in _rollups_as_0005_wrote_them(sightings, tmp_path).items():
                if rows:
                    marks = ", ".join(f":{c}" for c in cols)
                    conn.execute(
                        text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"),
                        [dict(zip(cols, row, strict=True)) for row in rows],
                    )
            conn.execute(text(PEER_TIMES_FROM_PEERS))

        def rollups(database: Database) -> dict[str, dict[tuple[object, ...], tuple[object, ...]]]:
            """Each rollup row's record-key sums (0010's source_rk, vantage_rk apart), by key."""
            out = {}
            with database.engine.connect() as conn:
                for t in ROLLUP_TABLES:
                    rks = [c for c in t.c if c.name.endswith("_rk")]
                    rks = [c for c in rks if c.name not in ("source_rk", "vantage_rk")]
                    rest = [c for c in t.c if not c.name.endswith("_rk")]
                    if not rks:
                        continue
                    out[t.name] = {
                        tuple(r[: len(rest)]): tuple(r[len(rest) :])
                        for r in conn.execute(select(*rest, *rks))
                    }
            return out

        before = rollups(db)
        assert any(any(rk) for rows in before.values() for rk in rows.values()) is False
        upgrade_database(db.engine, "0010_i15c_privacy")  # 0012 packs frames: its own test
        after = rollups(db)
        # What the writer keeps, folding the same sightings with the peers' record keys.
        scratch = Database(f"sqlite:///{tmp_path / 'with-keys.db'}")
        try:
            scratch.upgrade()
            rows = SightingColumns.of(SightingRow(*astuple_fields(a)) for a in sightings)
            new = [i for i, a in enumerate(sightings) if a.new_peer]
            rks = [record_keys[a.peer_key[0]] for a in sightings]
            with scratch.engine.begin() as conn:
                conn.execute(text("PRAGMA foreign_keys=OFF"))
                apply_rows(conn, rows, new, PresenceCache(), rks)
            _frames_as_rows(scratch)
            expected = rollups(scratch)
        finally:
            scratch.dispose()
        times = after.pop("rollup_peer_times")  # kept by the writer's peer upserts, not here
        assert times == {(1, 1, 2): (3333 + 4000,), (1, 2, 1): (2222,)}  # f1: peers 3, 4; f2: 2
        assert after == {k: v for k, v in expected.items() if k != "rollup_peer_times"}
        after["rollup_peer_times"] = times
        assert {k: set(v) for k, v in after.items()} == {k: set(v) for k, v in before.items()}
        assert any(any(rk) for rows in after.values() for rk in rows.values())
        # Sightings by source and vantage: each peer's key once per source and vantage.
        with db.engine.connect() as conn:
            act = rollup_activity.c
            by_source = {
                str(r[0]): int(r[1])
                for r in conn.execute(
                    select(act.source, func.sum(act.source_rk)).group_by(act.source)
                )
            }
            by_vantage = {
                str(r[0]): int(r[1])
                for r in conn.execute(
                    select(act.vantage, func.sum(act.vantage_rk)).group_by(act.vantage)
                )
            }
        peers_of: dict[str, set[int]] = {}
        for n, source, vantage, *_ in seen:
            peers_of.setdefault(source, set()).add(n)
            peers_of.setdefault(vantage, set()).add(n)
        assert by_source == {s: sum(record_keys[n] for n in peers_of[s]) for s in by_source}
        assert by_vantage == {v: sum(record_keys[n] for n in peers_of[v]) for v in by_vantage}
        assert set(by_source) == {"tracker", "dht", "swarm", "replay"}
    finally:
        db.dispose()


def astuple_fields(a: AnonymousSighting) -> tuple[object, ...]:
    """An AnonymousSighting's fields in SightingRow's order (the same fields, less new_peer)."""
    return tuple(getattr(a, f) for f in SightingRow._fields)


def test_0012_packs_every_frame_and_keeps_its_answers(db_url: str) -> None:
    """From the head before it (0011_i17g), with frames as rows: 0012_i17f_query packs every
    frame into rollup_frame_packed, drops ix_rollup_frame_city_top, and every frame the
    owner or the public reads is as it was; the writer goes on from there."""
    import random

    import h3

    from swarmwatch.analysis.frames import compute_compact_frames
    from swarmwatch.store.rollups import frame_cells, rollup_frame, rollup_frame_packed

    db = Database(db_url)
    try:
        db.upgrade()
        with db.session() as s:
            s.add(Study(id=1, name="before 0012", k_threshold=2))
            s.flush()
            s.add_all([Title(id=1, study_id=1, name="a"), Title(id=2, study_id=1, name="b")])
            s.flush()
            s.add_all(
                [
                    Torrent(id=1, study_id=1, title_id=1, infohash_v1="a" * 40),
                    Torrent(id=2, study_id=1, title_id=2, infohash_v1="b" * 40),
                ]
            )
        places = [  # (geoname id, country, lat, lon)
            (2643743, "GB", 51.51, -0.09),
            (2950159, "DE", 52.52, 13.40),
            (1850147, "JP", 35.68, 139.69),
            (5128581, "US", 40.71, -74.01),
        ]
        rng = random.Random(11)
        at = datetime(2026, 11, 27, 10, tzinfo=UTC)
        writer = BatchWriter(db.engine)
        for hour in range(30):  # frames close as the hours pass: most get packed
            batch = WriteBatch()
            for _ in range(rng.randrange(20, 60)):
                title = rng.choice((1, 2))
                gid, cc, lat, lon = rng.choice(places)
                cell = h3.str_to_int(h3.latlng_to_cell(lat + rng.random(), lon, 7))
                batch.sightings.append(
                    SightingRow(1, title, title, rng.randrange(40).to_bytes(16, "little"),
                                at + timedelta(hours=hour, minutes=rng.randrange(60)), "tracker",
                                "v1", None, cc, gid, gid, cell, None)
                )  # fmt: skip
            writer.write(batch)

        def answers() -> list[object]:
            out: list[object] = []
            with db.engine.connect() as conn:
                study = conn.execute(select(Study.__table__)).one()
                for exact in (True, False):
                    scope = resolve_scope(conn, study, exact=exact)
                    for interval in (3600, 86400):
                        for res in (3, 4, 5):
                            frames = compute_compact_frames(conn, scope, interval=interval, res=res)
                            frames.pop("method")
                            out.append(frames)
            return out

        want = answers()
        assert any(f["frames"] for f in want)  # type: ignore[index]
        _frames_as_rows(db)  # the form before: every frame as rows, with the top-cities index
        with db.engine.connect() as conn:
            assert "rollup_frame_packed" not in inspect(conn).get_table_names()
            rows = conn.execute(select(func.count()).select_from(rollup_frame)).scalar_one()
            assert rows > 0
            assert "ix_rollup_frame_city_top" in {
                ix["name"] for ix in inspect(conn).get_indexes("rollup_frame_city")
            }
        db.upgrade()
        with db.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(rollup_frame)).scalar_one() == 0
            packed = conn.execute(select(func.count()).select_from(rollup_frame_packed))
            assert packed.scalar_one() == 2 * (30 + 2)  # two titles' hours and days
            assert "ix_rollup_frame_city_top" not in {
                ix["name"] for ix in inspect(conn).get_indexes("rollup_frame_city")
            }
        assert answers() == want
        # The writer goes on: a later hour adds to its frame, packed or not.
        batch = WriteBatch()
        batch.sightings.append(
            SightingRow(1, 1, 1, (99).to_bytes(16, "little"), at + timedelta(hours=30), "tracker",
                        "v1", None, "GB", 2643743, 2643743, LONDON_7, None)
        )  # fmt: skip
        writer.write(batch)
        with db.engine.connect() as conn:
            bucket = int((at + timedelta(hours=30)).timestamp()) // 3600
            assert list(frame_cells(conn, [1], 3600, bucket).peers) == [1]
    finally:
        db.dispose()


LONDON_7 = h3i.latlng_to_cell(51.51, -0.09, 7)


def test_0012_packs_as_the_store_does() -> None:
    """0012's own copy of the packed layout writes what store.packed writes, and reads it."""
    import importlib.util
    import random

    from swarmwatch.store.packed import FrameCounts, pack, unpack

    path = Path(__file__).parents[1] / "migrations" / "versions" / "0012_i17f_packed_frames.py"
    spec = importlib.util.spec_from_file_location("m0012", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = random.Random(3)
    for n in (0, 1, 2, 50, 3000):
        counts = FrameCounts.from_dict(
            {
                rng.randrange(1 << 62): (rng.randrange(1, 999), rng.randrange(1 << 40))
                for _ in range(n)
            }
        )
        triples = list(zip(counts.keys, counts.peers, counts.rks, strict=True))
        assert module.pack_v1(triples) == pack(counts)
        assert module.unpack_v1(pack(counts)) == triples
        assert unpack(module.pack_v1(triples)) == counts
