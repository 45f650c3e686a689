"""Engines, sessions and Alembic upgrades for SQLite and PostgreSQL.

SQLite gets WAL and foreign keys so the API can read while the writer writes.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from swarmwatch import shipped
from swarmwatch.store.publication import ensure_publication_key

log = logging.getLogger(__name__)

MIGRATIONS_DIR = shipped("migrations")


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy's default driver is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: Set on every SQLite connection (besides WAL, for files).
SQLITE_PRAGMAS = ("PRAGMA foreign_keys=ON", "PRAGMA synchronous=NORMAL")


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    # The API serves from a 40-thread pool: let most of them hold a connection at once
    # (SQLite connections are cheap; PostgreSQL's default 100 allows several processes).
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_timeout", 10)
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if ":memory:" not in url and url != "sqlite://":
                cur.execute("PRAGMA journal_mode=WAL")
            for pragma in SQLITE_PRAGMAS:
                cur.execute(pragma)
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic, on the given engine's connection."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


class Database:
    """An engine plus a session factory; the one handle the API, CLI and writer share."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = normalise_url(url)
        self.engine = engine or make_engine(self.url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the file locked sleeps
        # in steps of up to 100 ms (busy_timeout): queueing the API's writers here, on a
        # lock, instead keeps each write to its own few milliseconds (PostgreSQL: no lock).
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else nullcontext()
        )
        # A dropped handle closes its pool: connections are closed, not garbage-collected
        # open (psycopg warns about that, and the server keeps the session until timeout).
        weakref.finalize(self, self.engine.dispose)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def upgrade(self) -> None:
        """The schema at head, and the store's own keys made where missing."""
        upgrade_database(self.engine)
        ensure_publication_key(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """session() for a short write: on SQLite, one such transaction at a time per process.

        Keep it short (no waiting on a client inside): every other writer of this
        process waits for it.
        """
        with self._write_lock, self.session() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
