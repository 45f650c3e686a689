"""Alembic environment: the URL comes from swarmwatch's settings (or the caller's connection)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import swarmwatch.ownendpoints  # noqa: F401  (registers crawler endpoint tables)
import swarmwatch.store.leases  # noqa: F401  (registers lease tables)
import swarmwatch.store.rollups  # noqa: F401  (registers rollup tables)
from swarmwatch.config import get_settings
from swarmwatch.store.database import make_engine, normalise_url
from swarmwatch.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER needs batch mode
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or normalise_url(get_settings().database_url)
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or normalise_url(get_settings().database_url)
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
