"""Answers cached by data version, refreshed in the background while ingest goes on.

Rankings and the Chao1 estimate are whole-study computations (tens of thousands of
places, or a pass over every peer); recomputing them per request cannot meet the
latency goals at alpha60's scale, and while a study is being crawled every writer
batch (about one a second) changes the data. So:

- ``data_version()`` is a cheap read that changes whenever anything an answer counts
  changes: per title, rollup_activity's sums of new peers and sightings (each new
  peer and each sighting adds to them in the same transaction as every other rollup;
  counters only grow), plus the size of the place tables the answers join.
- ``VersionedCache.get()`` returns the cached value of the current version. If the
  version moved on, it returns the previous value while it is younger than
  ``max_lag`` seconds (counted from the last read that found the data still at the
  answer's version), and once it is older than ``refresh_after`` seconds (or four
  times its own compute time, if longer) queues a
  recompute on one background thread (the answer says when its data was read); an
  older or missing value is computed in the request. Under steady reads with
  ongoing ingest, answers lag the data by about ``refresh_after`` plus one
  recompute, and no read waits for one. One refresher, and at most one refresh per
  answer every ``refresh_after`` seconds, keep recomputation from starving the
  reads on a small machine (a writer commits about once a second).

Every cached value is a complete, k-anonymous answer computed from one read, so
serving a slightly older one never mixes two states of the data.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, bindparam, func, select

from swarmwatch.store.models import City, Metro
from swarmwatch.store.rollups import rollup_activity

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Oldest answer served while a fresher one is computed: a few writer batches' worth.
DEFAULT_MAX_LAG_S = 30.0
#: Youngest answer worth recomputing: bounds background work to one refresh per answer
#: per 10 s however often the writer commits (a full-scale city ranking takes ~1 s of
#: CPU, and a refresh competes with reads for the GIL), while keeping answers live.
DEFAULT_REFRESH_AFTER_S = 10.0
#: Refresh an answer no sooner than this many times its own compute time after the last.
REFRESH_COST_FACTOR = 4.0


def data_version(conn: Connection, title_ids: Sequence[int]) -> tuple[int, ...]:
    """A value that changes whenever the rollups or place tables of these titles change."""
    a = rollup_activity
    titles: Any = bindparam("titles", list(title_ids), expanding=True)
    new_peers, sightings = conn.execute(
        select(
            func.coalesce(func.sum(a.c.new_peers), 0), func.coalesce(func.sum(a.c.sightings), 0)
        ).where(a.c.title_id.in_(titles))
    ).one()
    cities = conn.execute(select(func.count()).select_from(City)).scalar_one()
    # A loaded urban-area table may have as many areas as the one it replaced.
    metros, people = conn.execute(
        select(func.count(), func.coalesce(func.sum(Metro.population), 0)).select_from(Metro)
    ).one()
    return (int(new_peers), int(sightings), int(cities), int(metros), int(people))


@dataclass(slots=True)
class Versioned(Generic[T]):
    value: T
    version: Hashable
    read_at: datetime  # when the data behind value was read (UTC)
    stamp: float  # the same on the monotonic clock
    cost: float = 0.0  # seconds it took to compute: no fresher answer can come sooner
    # Last time (monotonic) a read found the data still at this version: the answer was
    # current then, so its lag counts from here, not from when it was computed. Without
    # this, an answer of a study that sat idle for a minute looked a minute stale on the
    # first write after it, and every level was recomputed inside a request.
    confirmed: float = float("-inf")


class VersionedCache(Generic[T]):
    """A bounded LRU of answers by key, each tagged with the data version it counts."""

    def __init__(
        self,
        max_entries: int = 256,
        max_lag: float = DEFAULT_MAX_LAG_S,
        clock: Callable[[], float] = time.monotonic,
        refresh_after: float = DEFAULT_REFRESH_AFTER_S,
        refresher: Refresher | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_lag = max_lag
        self.refresh_after = refresh_after
        self.clock = clock
        self.refresher = refresher or Refresher()
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Versioned[T]] = OrderedDict()
        self._refreshing: set[Hashable] = set()

    def get(
        self,
        key: Hashable,
        version: Hashable,
        compute: Callable[[], T],
        refresh: Callable[[], tuple[Hashable, T]] | None = None,
    ) -> Versioned[T]:
        """The value for key at `version`, or a recent enough older one (see module doc).

        `compute` builds the value in the caller's connection; `refresh` (optional)
        builds it on a connection of its own and returns the version it read with it.
        """
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                if entry.version == version:
                    entry.confirmed = max(entry.confirmed, now)
                    return entry
                age = now - max(entry.stamp, entry.confirmed)
                # An answer that takes longer than max_lag to compute (Chao1 over tens of
                # millions of peers) is that old when it is new: allow for its own cost.
                if age <= self.max_lag + entry.cost and refresh is not None:
                    # A costly answer is refreshed less often (its refreshes take at most
                    # about 1/REFRESH_COST_FACTOR of the refresher's time), but always
                    # well within max_lag; refresh_after 0 means as soon as data moves.
                    due = self.refresh_after and min(
                        max(self.refresh_after, REFRESH_COST_FACTOR * entry.cost),
                        self.max_lag / 2,
                    )
                    if age >= due and key not in self._refreshing:
                        self._refreshing.add(key)
                        self.refresher.submit(lambda: self._refresh(key, refresh))
                    return entry
        read_at = datetime.now(UTC)
        value = compute()
        fresh = Versioned(value, version, read_at, now, self.clock() - now)
        self._store(key, fresh)
        return fresh

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def seed(self, key: Hashable, version: Hashable, value: T, read_at: datetime) -> None:
        """An answer computed elsewhere (a previous server: store.keptframes) from data
        read at read_at, unless one is cached already: served, and refreshed, like any
        answer of that age."""
        age = max(0.0, (datetime.now(UTC) - read_at).total_seconds())
        with self._lock:
            if key in self._entries:
                return
        self._store(key, Versioned(value, version, read_at, self.clock() - age))

    def _refresh(self, key: Hashable, refresh: Callable[[], tuple[Hashable, T]]) -> None:
        try:
            stamp, read_at = self.clock(), datetime.now(UTC)
            version, value = refresh()
            self._store(key, Versioned(value, version, read_at, stamp, self.clock() - stamp))
        except Exception:  # a failed refresh leaves the older answer; the next read retries
            log.exception("background refresh of a cached answer failed")
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _store(self, key: Hashable, entry: Versioned[T]) -> None:
        with self._lock:
            old = self._entries.get(key)
            # Never replace an answer with one read earlier (a slow refresh finishing late).
            if old is None or old.stamp <= entry.stamp:
                self._entries[key] = entry
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Refresher:
    """One daemon thread running queued refreshes in order (started on first use).

    `after` runs after each refresh: a server passes gc.freeze (see AnalysisCaches).
    """

    def __init__(self, after: Callable[[], None] | None = None) -> None:
        self.after = after
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:  # the owner is shutting down: nobody will read the answer
                return
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="refresher")
                self._thread.start()

    def close(self, timeout: float) -> bool:
        """Run no more jobs; wait at most `timeout` s for the one running. True if stopped.

        Its owner closes it before disposing of the engine the jobs read: a refresh
        still holding a connection then would hand it back to a disposed pool, which
        drops it unclosed (psycopg's ResourceWarning, at some later garbage collection).
        """
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)  # after the jobs already queued
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def reopen(self) -> None:
        """Run jobs again after close() (an app served a second time, as tests do)."""
        with self._lock:
            self._closed = False

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                with self._lock:
                    if self._closed:
                        self._thread = None  # the next submit after reopen() starts one
                        return
                continue  # reopened before this thread got here: carry on
            job()
            if self.after is not None:
                self.after()


class Activity:
    """Requests in flight, so background warm-ups can step aside for them.

    On a 2-core machine a warm-up thread holding the GIL for seconds stretches every
    short request beside it several-fold; pausing between its steps while a request
    runs keeps those requests at their idle latency, at the cost of a slower warm-up.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight, or at most `timeout` seconds; idle or not."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)

    @contextmanager
    def set_aside(self) -> Iterator[None]:
        """Not counted while inside: for a request that waits on the very work that steps
        aside for requests (the start-up warm-up building the time-lapse it asked for).
        Counted, it would make that work pause for it, and both wait: 50 ms a frame,
        seconds for a 120-frame time-lapse of any size."""
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()


class PerEngine(Generic[T]):
    """One VersionedCache per database engine, dropped with the engine.

    Keyed by engine, not URL: a database recreated at the same URL (tests, a restore)
    must never be answered from the old one's cache, even at an equal data version.
    """

    def __init__(
        self,
        max_entries: int = 256,
        max_lag: float = DEFAULT_MAX_LAG_S,
        refresh_after: float = DEFAULT_REFRESH_AFTER_S,
        refresher: Refresher | None = None,
    ) -> None:
        self.max_entries, self.max_lag, self.refresh_after = max_entries, max_lag, refresh_after
        self.refresher = refresher or Refresher()
        self._lock = threading.Lock()
        self._caches: weakref.WeakKeyDictionary[Engine, VersionedCache[T]] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, engine: Engine) -> VersionedCache[T]:
        with self._lock:
            cache = self._caches.get(engine)
            if cache is None:
                cache = self._caches[engine] = VersionedCache(
                    self.max_entries,
                    self.max_lag,
                    refresh_after=self.refresh_after,
                    refresher=self.refresher,
                )
            return cache


__all__ = [
    "Activity",
    "DEFAULT_MAX_LAG_S",
    "DEFAULT_REFRESH_AFTER_S",
    "PerEngine",
    "Refresher",
    "Versioned",
    "VersionedCache",
    "data_version",
]
