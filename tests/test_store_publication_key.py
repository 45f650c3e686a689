"""The publication key is the store's: made when the schema is brought up, never by a read."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select

from swarmwatch.analysis.samplenoise import publication_key
from swarmwatch.store import Database
from swarmwatch.store.models import PublicationKey

pytestmark = pytest.mark.db


def test_upgrade_makes_the_key_once(db: Database) -> None:
    with db.engine.connect() as conn:
        first = publication_key(conn)
    assert len(first) == 32
    db.upgrade()  # again: the same key, not a new one (published noise stays fixed)
    with db.engine.connect() as conn:
        assert publication_key(conn) == first


def test_a_read_never_makes_the_key(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(delete(PublicationKey))
    with db.engine.connect() as conn, pytest.raises(RuntimeError, match="db upgrade"):
        publication_key(conn)
    with db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(PublicationKey)).scalar_one() == 0
    db.upgrade()
    with db.engine.connect() as conn:
        assert len(publication_key(conn)) == 32
