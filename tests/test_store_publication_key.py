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


def test_workers_upgrading_together_share_one_key(db: Database) -> None:
    """Crawl workers started at once all upgrade: none fails, and one key results."""
    import threading

    from swarmwatch.store.publication import ensure_publication_key

    with db.engine.begin() as conn:
        conn.execute(delete(PublicationKey))
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def upgrade() -> None:
        start.wait(30)
        try:
            ensure_publication_key(db.engine)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(PublicationKey)).scalar_one() == 1
