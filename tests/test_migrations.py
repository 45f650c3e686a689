"""Alembic builds the models' schema exactly, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text

from swarmwatch.models import Base, Peer, Title
from swarmwatch.store import Database
from swarmwatch.store.database import upgrade_database


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
