"""A stopping server waits for its background readers, so no connection outlives its pool.

Found by the repeated runs of the test command (issue 13): psycopg's "connection deleted
while still open" ResourceWarning failed a later PostgreSQL test at random. A refresh or
warm-up thread still holding a connection when the server stopped handed it back after
the test had disposed of the engine, to a pool that no longer existed, which dropped it
unclosed.
"""

from __future__ import annotations

import gc
import threading
import time

import pytest
from sqlalchemy import text

from swarmwatch.api import create_app
from swarmwatch.config import get_settings
from swarmwatch.store import Database
from tests.conftest import LiveServer

pytestmark = pytest.mark.db


def test_shutdown_waits_for_a_background_refresh_holding_a_connection(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    app = create_app(get_settings(), db)
    caches = app.state.analysis_caches
    holding, done = threading.Event(), threading.Event()

    def slow_refresh() -> None:  # what a refresh of a large answer looks like to the pool
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            holding.set()
            time.sleep(1.0)  # the refresh's own work, not a wait for the test
        done.set()

    with LiveServer(app):
        caches.refresher.submit(slow_refresh)
        assert holding.wait(30)
    # The server is down: whatever it ran in the background has given its connection back.
    assert done.is_set()
    db.dispose()
    gc.collect()  # a connection dropped unclosed would warn here (warnings are errors)
