"""Shared fixtures: a real database (SQLite file, or the PostgreSQL server the
test script started when SWARMWATCH_TEST_DATABASE_URL is set), and settings
that keep every test on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from swarmwatch.config import get_settings
from swarmwatch.store import Database

PG_URL = os.environ.get("SWARMWATCH_TEST_DATABASE_URL")
DB_FIXTURES = {"db", "db_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that touches the database runs again on PostgreSQL (`pytest -m db`).
    for item in items:
        if DB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


@pytest.fixture(autouse=True)
def _loopback_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never leave loopback, whatever the developer's environment says."""
    monkeypatch.setenv("SWARMWATCH_LOOPBACK_ONLY", "true")
    monkeypatch.setenv("SWARMWATCH_DHT_BOOTSTRAP", "")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A URL to an empty database, also set as SWARMWATCH_DATABASE_URL."""
    if PG_URL:
        db = Database(PG_URL)
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.dispose()
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'swarmwatch.db'}"
    monkeypatch.setenv("SWARMWATCH_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database."""
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()
