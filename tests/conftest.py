"""Shared fixtures: a real database (SQLite file, or the PostgreSQL server the
test script started when SWARMWATCH_TEST_DATABASE_URL is set), and settings
that keep every test on loopback."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
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


#: The deployment secret of this test run (SWARMWATCH_SECRET): study keys need one.
TEST_SECRET = secrets.token_urlsafe(32)


@pytest.fixture(autouse=True)
def _deployment_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test holds a deployment secret, as a crawler would, unless it removes it."""
    monkeypatch.setenv("SWARMWATCH_SECRET", TEST_SECRET)
    monkeypatch.delenv("SWARMWATCH_SECRET_FILE", raising=False)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pg_run_url() -> Iterator[str | None]:
    """A PostgreSQL database of this test run's own, on the server of
    SWARMWATCH_TEST_DATABASE_URL, dropped at the end: every test empties its schema,
    so two runs sharing one database (two developers, a helper beside CI) would
    empty each other's. A role that may not create databases gets the given one."""
    if not PG_URL:
        yield None
        return
    name = f"swarmwatch_test_{os.getpid()}_{secrets.token_hex(4)}"
    server = Database(PG_URL)
    admin = server.engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except sa_exc.ProgrammingError:  # no CREATEDB privilege
        server.dispose()
        yield PG_URL
        return
    try:
        yield server.engine.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@pytest.fixture
def db_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_run_url: str | None
) -> Iterator[str]:
    """A URL to an empty database, also set as SWARMWATCH_DATABASE_URL."""
    if pg_run_url:
        db = Database(pg_run_url)
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.dispose()
        url = pg_run_url
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


class LiveServer:
    """A real uvicorn server on a loopback port chosen by the OS, in a thread."""

    def __init__(self, app: object) -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def api_key(db: Database) -> str:
    from swarmwatch.auth import create_api_key

    with db.session() as session:
        return create_api_key(session, "tests")


@pytest.fixture
def live_server(db: Database) -> Iterator[str]:
    """Base URL of the API served for real by uvicorn over the test database."""
    from swarmwatch.api import create_app

    app = create_app(get_settings(), db)
    with LiveServer(app) as server:
        yield server.url


@pytest.fixture
def client(live_server: str, api_key: str) -> Iterator[object]:
    """An httpx client on the live server that sends the API key."""
    import httpx

    with httpx.Client(
        base_url=live_server, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as c:
        yield c
