"""Crawl leases on a real database: fair shares, takeover after a crash, rebalancing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from swarmwatch.store import Database
from swarmwatch.store.leases import LEASE_SECONDS, heartbeat, release_all

SWARMS = [f"{i:040x}" for i in range(10)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def beat(db: Database, worker: str, at: datetime, vantage: str = "a") -> frozenset[str]:
    with db.session() as s:
        return heartbeat(s, worker, vantage, SWARMS, now=at).held


def test_one_worker_takes_everything(db: Database) -> None:
    assert beat(db, "w1", T0) == set(SWARMS)


def test_two_workers_split_and_never_overlap(db: Database) -> None:
    w1 = beat(db, "w1", T0)
    assert len(w1) == 10
    w2 = beat(db, "w2", T0 + timedelta(seconds=1))  # w1 still holds all: w2 gets nothing yet
    assert w2 == set()
    w1 = beat(db, "w1", T0 + timedelta(seconds=2))  # w1 sees two live workers: gives back 5
    assert len(w1) == 5
    w2 = beat(db, "w2", T0 + timedelta(seconds=3))
    assert len(w2) == 5 and not (w1 & w2) and w1 | w2 == set(SWARMS)


def test_dead_worker_is_taken_over_after_expiry(db: Database) -> None:
    beat(db, "w1", T0)
    beat(db, "w2", T0 + timedelta(seconds=1))
    w1 = beat(db, "w1", T0 + timedelta(seconds=2))
    w2 = beat(db, "w2", T0 + timedelta(seconds=3))
    assert len(w1) == len(w2) == 5
    # w1 is killed (no release). Before its leases expire, w2 cannot take them.
    soon = T0 + timedelta(seconds=10)
    assert beat(db, "w2", soon) == w2
    later = T0 + timedelta(seconds=2 + LEASE_SECONDS + 1)
    assert beat(db, "w2", later) == set(SWARMS)


def test_clean_release_hands_over_at_once(db: Database) -> None:
    beat(db, "w1", T0)
    with db.session() as s:
        release_all(s, "w1")
    assert beat(db, "w2", T0 + timedelta(seconds=1)) == set(SWARMS)


def test_vantages_are_independent(db: Database) -> None:
    assert beat(db, "w1", T0, vantage="berlin") == set(SWARMS)
    assert beat(db, "w2", T0, vantage="tokyo") == set(SWARMS)


def test_unregistered_swarms_are_dropped(db: Database) -> None:
    beat(db, "w1", T0)
    with db.session() as s:
        held = heartbeat(s, "w1", "a", SWARMS[:3], now=T0 + timedelta(seconds=1)).held
    assert held == set(SWARMS[:3])
