"""Answers cached by data version: when an older answer may be served, and when not."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest

from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.versioned import (
    PerEngine,
    VersionedCache,
    data_version,
)
from swarmwatch.store import Database
from swarmwatch.store.rollups import apply_batch
from tests.test_analysis_exact import D0, scope_of, sighting, study_db  # noqa: F401


class ManualRefresher:
    """Runs queued refreshes only when the test says so."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.append(job)

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


def manual_cache(start: float) -> tuple[VersionedCache[str], list[float], ManualRefresher]:
    """A cache with max_lag 30 s and refresh_after 5 s, on a clock the test sets
    (now[0]), whose refreshes run only when the test says so."""
    now = [start]
    refresher = ManualRefresher()
    cache: VersionedCache[str] = VersionedCache(
        max_lag=30,
        refresh_after=5,
        clock=lambda: now[0],
        refresher=refresher,  # type: ignore[arg-type]
    )
    return cache, now, refresher


def test_versioned_cache_serves_recent_answers_and_refreshes_them() -> None:
    cache, now, refresher = manual_cache(100.0)
    computed: list[str] = []

    def compute(value: str) -> Callable[[], str]:
        def run() -> str:
            computed.append(value)
            return value

        return run

    assert cache.get("k", 1, compute("v1")).value == "v1"
    assert cache.get("k", 1, compute("never")).value == "v1"  # same version: no work
    # A new version 2 s later: the answer is too young to be worth a refresh.
    now[0] = 102.0
    assert cache.get("k", 2, compute("x"), lambda: (2, "v2")).value == "v1"
    assert refresher.jobs == []
    # 6 s old: still served, and one refresh is queued however often it is asked for.
    now[0] = 106.0
    assert cache.get("k", 2, compute("x"), lambda: (2, "v2")).value == "v1"
    assert cache.get("k", 2, compute("x"), lambda: (2, "v2")).value == "v1"
    assert len(refresher.jobs) == 1
    refresher.run()
    got = cache.get("k", 2, compute("x"))
    assert (got.value, got.version) == ("v2", 2)
    # Past max_lag, an outdated answer is never served: the request computes.
    now[0] = 200.0
    assert cache.get("k", 3, compute("v3"), lambda: (3, "late")).value == "v3"
    # Without a refresh function, an outdated answer is recomputed at once.
    assert cache.get("k", 4, compute("v4")).value == "v4"
    assert computed == ["v1", "v3", "v4"]


def test_a_slow_answer_is_allowed_its_own_cost_in_lag() -> None:
    cache, now, refresher = manual_cache(0.0)

    def slow() -> str:
        now[0] += 40.0  # takes longer than max_lag
        return "v1"

    cache.get("k", 1, slow)
    now[0] = 60.0  # 60 s after its read, 20 s after it was ready: still served
    assert cache.get("k", 2, lambda: "sync", lambda: (2, "v2")).value == "v1"
    assert len(refresher.jobs) == 1
    now[0] = 71.0  # beyond max_lag + cost: computed in the request
    assert cache.get("k", 3, lambda: "v3", lambda: (3, "x")).value == "v3"


def test_lag_counts_from_the_last_read_that_found_the_answer_current() -> None:
    cache, now, refresher = manual_cache(0.0)
    cache.get("k", 1, lambda: "v1")
    now[0] = 100.0  # a quiet study: still version 1, so v1 is current at t = 100
    assert cache.get("k", 1, lambda: "never").value == "v1"
    now[0] = 107.0  # ingest resumes: v1 is at most 7 s behind, served while refreshed
    assert cache.get("k", 2, lambda: "sync", lambda: (2, "v2")).value == "v1"
    assert len(refresher.jobs) == 1
    now[0] = 131.0  # 31 s since v1 was last known current: computed in the request
    assert cache.get("k", 3, lambda: "v3", lambda: (3, "x")).value == "v3"


def test_a_costly_answer_is_refreshed_less_often() -> None:
    cache, now, refresher = manual_cache(0.0)

    def slow() -> str:
        now[0] += 3.0
        return "v1"

    cache.get("k", 1, slow)  # read at 0, took 3 s: refreshed no sooner than 12 s on
    now[0] = 11.0
    assert cache.get("k", 2, lambda: "x", lambda: (2, "v2")).value == "v1"
    assert refresher.jobs == []
    now[0] = 12.0
    assert cache.get("k", 2, lambda: "x", lambda: (2, "v2")).value == "v1"
    assert len(refresher.jobs) == 1


def test_a_late_refresh_never_replaces_a_newer_answer() -> None:
    cache, now, refresher = manual_cache(0.0)
    cache.get("k", 1, lambda: "v1")
    now[0] = 10.0
    cache.get("k", 2, lambda: "x", lambda: (2, "old read"))  # queued, read at t = 10
    now[0] = 50.0
    assert cache.get("k", 3, lambda: "v3").value == "v3"  # computed at t = 50
    refresher.run()  # the refresh queued at t = 10 reads (and stamps) now: it is newer
    assert cache.get("k", 2, lambda: "x").value == "old read"


def test_caches_are_per_engine(db: Database, tmp_path: object) -> None:
    other = Database(f"sqlite:///{tmp_path}/other.db")
    caches: PerEngine[int] = PerEngine()
    assert caches.of(db.engine) is caches.of(db.engine)
    assert caches.of(db.engine) is not caches.of(other.engine)
    other.dispose()


def test_rankings_follow_new_data(
    study_db: Database,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scope = scope_of(study_db, title="B", exact=True)  # exact: the counts are the point
    caches = AnalysisCaches()
    with study_db.engine.connect() as conn:
        before = data_version(conn, scope.title_ids)
        first = compute_ranking(conn, scope, level="country", caches=caches)
    assert [(r.place_id, r.peers) for r in first.rows] == [("FR", 5)]
    # A repeat sighting (no new peer) still moves the version: sightings count in it.
    with study_db.engine.begin() as conn:
        apply_batch(conn, [sighting(2, 0, 103, D0 + timedelta(days=1, hours=4))])
    with study_db.engine.connect() as conn:
        again = data_version(conn, scope.title_ids)
    assert again != before and again[0] == before[0]
    with study_db.engine.begin() as conn:
        apply_batch(
            conn,
            [sighting(2, 100 + i, 201, D0 + timedelta(days=1), new_peer=True) for i in range(6)],
        )
    with study_db.engine.connect() as conn:
        assert data_version(conn, scope.title_ids)[0] == before[0] + 6
        # The cached answer is young: served as it was, and no refresh is due yet.
        rows = compute_ranking(conn, scope, level="country", caches=caches).rows
        assert [(r.place_id, r.peers) for r in rows] == [("FR", 5)]
    # Once it is due, the next read still gets it and queues the refresh...
    monkeypatch.setattr(caches.levels.of(study_db.engine), "refresh_after", 0.0)
    with study_db.engine.connect() as conn:
        rows = compute_ranking(conn, scope, level="country", caches=caches).rows
        assert [(r.place_id, r.peers) for r in rows] == [("FR", 5)]
    done = threading.Event()
    caches.refresher.submit(done.set)  # runs after every refresh queued before it
    assert done.wait(60)
    # ...and then the answer counts the new peers (Delta's 6 in DE).
    with study_db.engine.connect() as conn:
        rows = compute_ranking(conn, scope, level="country", caches=caches).rows
    assert [(r.place_id, r.peers) for r in rows] == [("DE", 6), ("FR", 5)]


def test_reads_and_warm_ups_leave_the_process_garbage_collector_alone(
    study_db: Database,  # noqa: F811
) -> None:
    """gc.freeze() is the serving process's choice (cli.server_caches), never the
    library's: a warm-up and its reads with default caches freeze nothing."""
    from swarmwatch.analysis.frames import warm_frames
    from swarmwatch.cli import server_caches

    caches = AnalysisCaches()
    before = gc.get_freeze_count()
    warm_frames(study_db, caches)
    with study_db.engine.connect() as conn:
        compute_ranking(conn, scope_of(study_db), level="city", caches=caches)
    assert gc.get_freeze_count() == before
    assert server_caches().settle is gc.freeze


def test_a_closed_refresher_drops_new_jobs_and_runs_again_when_reopened() -> None:
    """A stopping server closes its refresher (no connection may outlive the engine);
    an app served again reopens it, and its refreshes run again."""
    from swarmwatch.analysis.versioned import Refresher

    refresher = Refresher()
    assert refresher.close(5)  # never started: nothing to wait for
    refresher.reopen()
    first = threading.Event()
    refresher.submit(first.set)
    assert first.wait(30)
    ran: list[str] = []
    release = threading.Event()
    refresher.submit(lambda: (release.wait(30), ran.append("queued before close")))
    closer = threading.Thread(target=lambda: ran.append(f"closed {refresher.close(30)}"))
    closer.start()
    release.set()
    closer.join(30)
    assert ran == ["queued before close", "closed True"]
    refresher.submit(lambda: ran.append("after close"))  # dropped, not queued
    refresher.reopen()
    again = threading.Event()
    refresher.submit(again.set)
    assert again.wait(30)
    assert "after close" not in ran


def test_the_warm_up_stops_between_frames(study_db: Database) -> None:  # noqa: F811
    """A stopping server need not wait for a whole time-lapse to be warmed."""
    from swarmwatch.analysis.frames import WarmUpStopped, keep_frames_warm, warm_frames

    stop = threading.Event()
    stop.set()
    with pytest.raises(WarmUpStopped):
        warm_frames(study_db, AnalysisCaches(), stop=stop)
    keep_frames_warm(study_db, AnalysisCaches(), stop)  # returns, nothing logged as failed
