"""Alembic builds the models' schema exactly, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from swarmwatch.models import Base
from swarmwatch.store import Database


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
