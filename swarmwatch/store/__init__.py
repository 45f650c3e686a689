"""Storage: engines for SQLite (embedded default) and PostgreSQL, and migrations."""

from __future__ import annotations

from swarmwatch.store.database import (
    Database,
    make_engine,
    upgrade_database,
)

__all__ = ["Database", "make_engine", "upgrade_database"]
