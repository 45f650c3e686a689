"""Storage: the schema (models, rollup and lease tables), the one writer and its rollup
upkeep, engines for SQLite (embedded default) and PostgreSQL, and migrations.

The pipeline hands the writer typed columnar batches (batch.SightingColumns); analysis
only reads.
"""

from __future__ import annotations

from swarmwatch.store.database import (
    Database,
    make_engine,
    upgrade_database,
)

__all__ = ["Database", "make_engine", "upgrade_database"]
