"""One `swarmwatch ingest` at a time per database, held by a lock that ends with its holder.

Two ingests at once could both count a sighting that neither has stored yet: each reads
the replay coverage when it starts and writes its own with each batch. So an ingest holds
this lock from before it reads the coverage until its last batch is committed.

- SQLite: an exclusive flock on a file beside the database (`<file>-ingest.lock`, as
  `-wal` and `-shm` are), which also names the holder (host, pid, since when).
- PostgreSQL: a session advisory lock, on a connection kept for the ingest.

Either is let go by the operating system or the server when its holder ends, however it
ends: a `kill -9` leaves no lock to expire or to clear by hand.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import text

from swarmwatch.store.database import Database

#: The advisory lock's key on PostgreSQL (any fixed 64-bit number no other code uses).
ADVISORY_KEY = 0x5377_6172_6D49_6E67  # "SwarmIng"
#: How long a new ingest waits for a running one to end before it refuses. A holder that
#: was just killed is let go at once by the kernel (SQLite), and within moments by a
#: PostgreSQL server, which notices the closed connection.
WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.05


class IngestBusy(Exception):
    """Another ingest holds the database; the message says which, when it is known."""


def lock_path(db: Database) -> str | None:
    """The lock file of a SQLite file database (None: in memory, or not SQLite)."""
    if not db.is_sqlite:
        return None
    database = db.engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return os.path.abspath(database) + "-ingest.lock"


@contextmanager
def ingest_lock(db: Database, *, wait: float | None = None) -> Iterator[None]:
    """Hold the database's ingest lock for the block; IngestBusy if another ingest keeps
    it for `wait` seconds (default WAIT_SECONDS)."""
    wait = WAIT_SECONDS if wait is None else wait
    if db.is_sqlite:
        path = lock_path(db)
        if path is None:  # an in-memory database: no other process can reach it
            yield
            return
        with _file_lock(path, wait):
            yield
        return
    with _advisory_lock(db, wait):
        yield


def _deadline_passed(deadline: float) -> bool:
    if time.monotonic() >= deadline:
        return True
    time.sleep(_POLL_SECONDS)
    return False


@contextmanager
def _file_lock(path: str, wait: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if _deadline_passed(deadline):
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise IngestBusy(_busy(holder)) from None
        # Who holds it, for the message a refused ingest prints (no peer data: the
        # operator's host name and process).
        os.ftruncate(fd, 0)
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()} since {since}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(db: Database, wait: float) -> Iterator[None]:
    with db.engine.connect() as conn:
        deadline = time.monotonic() + wait
        while True:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            held = bool(got.scalar_one())
            conn.commit()  # a session lock outlives the transaction: none is left open
            if held:
                break
            if _deadline_passed(deadline):
                holder = conn.execute(
                    text(
                        "SELECT a.pid, a.backend_start"
                        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                        " WHERE l.locktype = 'advisory' AND l.granted"
                        " AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
                    ),
                    {"hi": ADVISORY_KEY >> 32, "lo": ADVISORY_KEY & 0xFFFFFFFF},
                ).first()
                conn.rollback()
                who = (
                    f"PostgreSQL backend {holder[0]}, connected {holder[1]:%Y-%m-%d %H:%M:%S}"
                    if holder is not None
                    else ""
                )
                raise IngestBusy(_busy(who))
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            conn.commit()


def _busy(holder: str) -> str:
    who = f" ({holder})" if holder else ""
    return (
        f"another ingest is running on this database{who}: one at a time, since two "
        "could count a sighting twice; run this one when it has ended"
    )


__all__ = ["ADVISORY_KEY", "IngestBusy", "WAIT_SECONDS", "ingest_lock", "lock_path"]
