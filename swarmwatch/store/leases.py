"""Crawl leases: spread the registered swarms over the workers of each vantage point.

Every vantage crawls every swarm (that is what a vantage point is for); within
a vantage, each swarm is leased to one worker at a time. Leases live in the
database, are renewed by each worker's heartbeat, and are taken over when they
expire (a worker died). On PostgreSQL, claims lock rows with SKIP LOCKED so two
workers never block on, or both win, the same swarm; SQLite has one writer.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Index, Integer, String, Table, delete, func, select, update
from sqlalchemy.orm import Session

from swarmwatch.store.models import Base, UTCDateTime, utcnow

#: A lease outlives three missed heartbeats (HEARTBEAT_SECONDS) before another worker takes it.
LEASE_SECONDS = 45.0
HEARTBEAT_SECONDS = 15.0
#: The expiry of a lease nobody holds (never held, or given back): free at once.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

crawl_worker = Table(
    "crawl_worker",
    Base.metadata,
    Column("worker_id", String(200), primary_key=True),
    Column("vantage", String(100), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("leases", Integer, nullable=False, default=0),
    Index("ix_crawl_worker_vantage", "vantage"),
)

crawl_lease = Table(
    "crawl_lease",
    Base.metadata,
    Column("infohash", String(64), primary_key=True),
    Column("vantage", String(100), primary_key=True),
    Column("worker_id", String(200), nullable=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_crawl_lease_worker", "worker_id"),
)


def new_worker_id(vantage: str) -> str:
    """Host, process and a random suffix: unique even when a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{vantage}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseRound:
    """What one heartbeat decided for this worker."""

    held: frozenset[str]
    claimed: int
    released: int
    live_workers: int


def heartbeat(
    session: Session,
    worker_id: str,
    vantage: str,
    infohashes: Sequence[str],
    *,
    now: datetime | None = None,
    lease_seconds: float = LEASE_SECONDS,
) -> LeaseRound:
    """Renew this worker's leases, hand back its excess, claim free or expired ones.

    Each worker aims at its fair share, ceil(swarms / live workers of the vantage),
    so a new worker gets swarms from the others within a few heartbeats and a dead
    one's swarms are taken over once its leases expire.
    """
    now = now or utcnow()
    until = now + timedelta(seconds=lease_seconds)
    wanted = set(infohashes)
    _upsert_worker(session, worker_id, vantage, now)
    live = (
        session.scalar(
            select(func.count())
            .select_from(crawl_worker)
            .where(
                crawl_worker.c.vantage == vantage,
                crawl_worker.c.heartbeat_at > now - timedelta(seconds=lease_seconds),
            )
        )
        or 1
    )
    share = math.ceil(len(wanted) / live) if wanted else 0

    # Swarms no longer registered: drop their leases.
    held = set(
        session.scalars(
            select(crawl_lease.c.infohash).where(
                crawl_lease.c.vantage == vantage, crawl_lease.c.worker_id == worker_id
            )
        )
    )
    gone = held - wanted
    if gone:
        session.execute(
            delete(crawl_lease).where(
                crawl_lease.c.vantage == vantage, crawl_lease.c.infohash.in_(sorted(gone))
            )
        )
        held -= gone

    # Excess over the fair share goes back (expired now), for the other workers to claim.
    released = 0
    if len(held) > share:
        excess = sorted(held)[share:]
        session.execute(
            update(crawl_lease)
            .where(
                crawl_lease.c.vantage == vantage,
                crawl_lease.c.worker_id == worker_id,
                crawl_lease.c.infohash.in_(excess),
            )
            .values(worker_id=None, expires_at=EPOCH)
        )
        held -= set(excess)
        released = len(excess)

    if held:
        session.execute(
            update(crawl_lease)
            .where(crawl_lease.c.vantage == vantage, crawl_lease.c.worker_id == worker_id)
            .values(expires_at=until)
        )

    # Every registered swarm has a lease row, so claims are row updates we can lock.
    known = set(
        session.scalars(select(crawl_lease.c.infohash).where(crawl_lease.c.vantage == vantage))
    )
    fresh = sorted(wanted - known)
    if fresh:
        _insert_missing(session, vantage, fresh)

    claimed = 0
    room = share - len(held)
    if room > 0:
        free = list(
            session.scalars(
                select(crawl_lease.c.infohash)
                .where(
                    crawl_lease.c.vantage == vantage,
                    crawl_lease.c.expires_at <= now,
                    crawl_lease.c.infohash.in_(sorted(wanted)),
                )
                .order_by(crawl_lease.c.expires_at, crawl_lease.c.infohash)
                .limit(room)
                .with_for_update(skip_locked=True)
            )
        )
        if free:
            result = session.execute(
                update(crawl_lease)
                .where(
                    crawl_lease.c.vantage == vantage,
                    crawl_lease.c.infohash.in_(free),
                    crawl_lease.c.expires_at <= now,  # still free: nobody took it meanwhile
                )
                .values(worker_id=worker_id, expires_at=until)
                .returning(crawl_lease.c.infohash)
            )
            got = set(result.scalars())
            held |= got
            claimed = len(got)

    session.execute(
        update(crawl_worker).where(crawl_worker.c.worker_id == worker_id).values(leases=len(held))
    )
    return LeaseRound(frozenset(held), claimed, released, int(live))


def release_all(session: Session, worker_id: str) -> None:
    """A clean shutdown: give every lease back at once and leave the worker table."""
    session.execute(
        update(crawl_lease)
        .where(crawl_lease.c.worker_id == worker_id)
        .values(worker_id=None, expires_at=EPOCH)
    )
    session.execute(delete(crawl_worker).where(crawl_worker.c.worker_id == worker_id))


def _upsert_worker(session: Session, worker_id: str, vantage: str, now: datetime) -> None:
    done = session.execute(
        update(crawl_worker).where(crawl_worker.c.worker_id == worker_id).values(heartbeat_at=now)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(
            crawl_worker.insert().values(
                worker_id=worker_id, vantage=vantage, started_at=now, heartbeat_at=now, leases=0
            )
        )


def _insert_missing(session: Session, vantage: str, infohashes: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    rows = [
        {"infohash": ih, "vantage": vantage, "worker_id": None, "expires_at": EPOCH}
        for ih in infohashes
    ]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(crawl_lease).values(rows).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(crawl_lease).values(rows).on_conflict_do_nothing())
