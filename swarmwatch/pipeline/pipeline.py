"""The pipeline: crawlers put PeerSightings in, anonymous placed sightings come out in the store.

Stages (bitmagnet-style, joined by bounded buffers): coalesce → geolocate →
anonymise + bin → one batch writer. Raw addresses exist only inside this object.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from ipaddress import IPv6Address
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from swarmwatch.config import Settings, get_settings
from swarmwatch.custody import KeyCustody
from swarmwatch.geoip import is_embedded
from swarmwatch.pipeline.anonymise import active_study_keys, peer_key
from swarmwatch.pipeline.geoipdb import active_asn_db, active_city_db
from swarmwatch.pipeline.geolocate import V6_FLAG, Geolocator, packed_key
from swarmwatch.pipeline.places import metro_map
from swarmwatch.sightings import PeerSighting, SampleRecord, Source
from swarmwatch.store import Database
from swarmwatch.store.batch import ReplayMark
from swarmwatch.store.models import Torrent
from swarmwatch.store.writer import (
    BatchWriter,
    CommitUncertain,
    WriteBatch,
    WriteResult,
)

log = logging.getLogger(__name__)

#: Repeats of one peer in one swarm, from one source and vantage, inside one window of
#: this many seconds are stored once (the first). Every analysis works at a minute or
#: coarser (trackers are asked at most once a minute), so nothing is lost but rows.
SIGHTING_WINDOW_SECONDS = 60
#: Re-read torrents and study keys this often (new registrations, seals).
REGISTRY_REFRESH_SECONDS = 5.0
#: An unknown infohash triggers a re-read, but not more often than this.
UNKNOWN_REFRESH_SECONDS = 1.0
#: How long a sample of a not yet known infohash is kept for later batches: longer than
#: two registry re-reads, so a torrent registered just now gets its first samples.
UNKNOWN_SAMPLE_HOLD_SECONDS = 3 * REGISTRY_REFRESH_SECONDS
#: Coalescing keys held at most; past this the window starts again (duplicates, never loss).
COALESCE_MAX_ENTRIES = 2_000_000
#: While the writer is behind, the prepare stage makes batches this many times
#: batch_size (writer CPU per row, stage harness: -25 % at 4x a 5,000-row batch).
BEHIND_BATCH_FACTOR = 4
#: Tries for a batch that fails with an error that is neither the database going away
#: nor bad data (a bug, say): it is then counted as lost rather than blocking forever.
WRITE_ATTEMPTS = 3
#: Back-off between tries while the database is unreachable: doubling from the first,
#: capped so that a restarted server is noticed within seconds.
WRITE_BACKOFF_FIRST_SECONDS = 0.1
WRITE_BACKOFF_MAX_SECONDS = 5.0


_SOURCE_NAME = {member: str(member.value) for member in Source}


class PipelineClosed(Exception):
    """put() after close(): the pipeline accepts nothing more."""


@dataclass(slots=True)
class PipelineStats:
    """Counters for /metrics and logs. Every sighting that is not stored is counted."""

    received: int = 0
    coalesced: int = 0  # repeats inside the sighting window
    unknown_infohash: int = 0  # no registered torrent: dropped
    sealed: int = 0  # the study is sealed (no key): dropped
    invalid: int = 0  # naive timestamp: dropped
    stored: int = 0  # sighting rows written (one per study the torrent is in)
    new_peers: int = 0
    anomalies: int = 0  # stored sightings with no city (also in table anomaly)
    samples: int = 0
    unknown_samples: int = 0
    batches: int = 0
    write_errors: int = 0  # failed write attempts (each retried or counted in lost)
    write_retries: int = 0  # attempts repeated because the database was unreachable
    lost: int = 0  # rows dropped: bad data that can never be written, or a bug
    geo_lookups: int = 0  # database lookups (network-cache misses)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TorrentRef:
    torrent_id: int
    study_id: int
    title_id: int


class Pipeline:
    """A SightingSink that geolocates, anonymises, bins and stores what crawlers find.

    Use as `async with Pipeline(db) as p:` or call start() and close(). put() waits
    when the buffer is full: that is the back-pressure on crawlers. close() (also on
    SIGTERM, see close_on_signals) writes everything accepted before it returns.

    Nothing accepted is lost (issue 8): a sighting is either committed or in this
    object's memory. While the database is unreachable (a PostgreSQL restart, a
    locked SQLite file) the writer retries the same batch with capped back-off for
    as long as it takes; the buffers fill and put() blocks the crawlers meanwhile.
    Only a batch the database rejects as data (an integrity or data error, which no
    retry can fix) is dropped, counted in stats.lost and logged without addresses.
    close() likewise waits for the database to come back. A kill -9 loses what was
    accepted and not yet committed: sightings wait at most flush_seconds before a
    write starts, so in steady state that is the last flush interval's worth plus
    the batch being written, and never more than queue_size + 4 batches (one being
    written, two queued, one prepared and waiting; a batch is batch_size sightings,
    or up to BEHIND_BATCH_FACTOR times that while the writer is behind).
    """

    def __init__(
        self,
        db: Database,
        *,
        geolocator: Geolocator | None = None,
        settings: Settings | None = None,
        batch_size: int | None = None,
        flush_seconds: float | None = None,
        queue_size: int | None = None,
        window_seconds: int = SIGHTING_WINDOW_SECONDS,
        geo_workers: int = 0,
        rollups: Any = True,
        refresh_seconds: float = REGISTRY_REFRESH_SECONDS,
        custody: KeyCustody | None = None,
    ) -> None:
        self.db = db
        self.settings = settings or get_settings()
        # The deployment secret that unwraps study keys: read now, so a missing or bad
        # one refuses the pipeline before it accepts a sighting (CustodyError).
        self.custody = custody or KeyCustody.from_settings(self.settings)
        self.batch_size = batch_size or self.settings.writer_batch_size
        self.flush_seconds = flush_seconds or self.settings.writer_flush_seconds
        self.queue_size = max(queue_size or self.settings.pipeline_queue_size, self.batch_size)
        self.window_seconds = window_seconds
        self.refresh_seconds = refresh_seconds
        self.stats = PipelineStats()
        self.writer = BatchWriter(db.engine, settings=self.settings, rollups=rollups)
        self._own_geolocator = geolocator is None
        self._geolocator = geolocator
        self._geo_workers = geo_workers

        self._items: list[PeerSighting] = []
        self._samples: list[SampleRecord] = []
        # Replay marks, each after the number of sightings put before it: a batch takes
        # the last mark its sightings reach (put_mark).
        self._marks: deque[tuple[int, ReplayMark]] = deque()
        self._items_put = 0
        self._items_taken = 0
        self._put_seq = 0
        self._taken_seq = 0
        self._done_seq = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._done = asyncio.Condition()
        self._force = False
        self._write_q: asyncio.Queue[tuple[WriteBatch, int] | None] = asyncio.Queue(maxsize=2)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._stop = False
        self._closed = asyncio.Event()
        self._started = False

        self._torrents: dict[str, list[TorrentRef]] = {}
        self._keys: dict[int, bytes] = {}
        self._refreshed_at = float("-inf")
        self._coalesce: dict[int, set[tuple[Any, ...]]] = {}
        self._coalesce_size = 0
        self._unknown_samples: list[tuple[SampleRecord, float]] = []

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Sightings accepted and still in memory (not yet prepared for writing)."""
        return len(self._items)

    @property
    def geolocator(self) -> Geolocator:
        if self._geolocator is None:
            raise RuntimeError("pipeline not started")
        return self._geolocator

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._geolocator is None:
            path = active_city_db(self.settings)
            asn = active_asn_db(self.settings)
            self._geolocator = await asyncio.to_thread(
                Geolocator, path, asn, workers=self._geo_workers
            )
            if is_embedded(path):
                log.warning(
                    "geolocating with the embedded GeoLite2 City of 2018: it is stale; "
                    "run `swarmwatch geoip install` for a current database"
                )
        await asyncio.to_thread(self._record_geoip)
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._run_prepare(), name="pipeline-prepare"),
            asyncio.create_task(self._run_write(), name="pipeline-write"),
        ]

    async def __aenter__(self) -> Pipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting, write everything accepted so far, release the workers."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._started:
                await self.flush()
                # The stages finish on their own: cancelling a task inside wait_for can
                # be swallowed on Python 3.11, which would leave close() waiting forever.
                self._stop = True
                self._wake.set()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            if self._own_geolocator and self._geolocator is not None:
                await asyncio.to_thread(self._geolocator.close)
            self._closed.set()
            log.info("pipeline closed: %s", self.stats.as_dict())

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def close_on_signals(
        self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """On SIGTERM (and SIGINT) flush the queue and close; await wait_closed() after."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s: flushing the pipeline before exit", sig.name)
        self._signal_task = asyncio.get_running_loop().create_task(self.close())

    # -- the sink ------------------------------------------------------------------------

    async def put(self, sighting: PeerSighting) -> None:
        if self._closing:
            raise PipelineClosed("the pipeline is closed")
        while len(self._items) >= self.queue_size:
            self._space.clear()
            await self._space.wait()
            if self._closing:
                raise PipelineClosed("the pipeline is closed")
        self._items.append(sighting)
        self._items_put += 1
        self._put_seq += 1
        if len(self._items) >= self.batch_size:
            self._wake.set()

    async def put_many(self, sightings: Iterable[PeerSighting]) -> None:
        """put() for each, for replay and benchmarks."""
        for s in sightings:
            await self.put(s)

    async def put_mark(self, mark: ReplayMark) -> None:
        """Note how far into a replayed file everything put so far reaches: stored in
        the transaction of the batch that takes the last of those sightings."""
        if self._closing:
            raise PipelineClosed("the pipeline is closed")
        self._marks.append((self._items_put, mark))
        self._put_seq += 1

    async def put_sample(self, sample: SampleRecord) -> None:
        if self._closing:
            raise PipelineClosed("the pipeline is closed")
        self._samples.append(sample)
        self._put_seq += 1

    async def flush(self) -> None:
        """Return once everything put before this call is written (or counted as lost)."""
        target = self._put_seq
        if not self._started:
            raise RuntimeError("pipeline not started")
        async with self._done:
            while self._done_seq < target:
                self._force = True
                self._wake.set()
                await self._done.wait()

    # -- registry ------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read registered torrents and study keys (creating keys a study lacks)."""
        torrents, keys, metros = await asyncio.to_thread(
            self._load_registry, not self.geolocator.has_metros
        )
        self._torrents, self._keys = torrents, keys
        if metros:
            self.geolocator.add_metros(metros)
        self._refreshed_at = time.monotonic()

    async def _refresh_while_preparing(self) -> None:
        """refresh(), but a database that is away keeps the registry we have.

        The sightings in hand were accepted: failing them because the registry
        could not be re-read would lose them while the database restarts.
        """
        try:
            await self.refresh()
        except Exception as exc:
            if write_failure_kind(exc) == "other":
                raise
            self._refreshed_at = time.monotonic()  # not again before the next interval
            log.warning(
                "pipeline: registry not re-read (%s); using the last one", type(exc).__name__
            )

    def _load_registry(
        self, want_metros: bool
    ) -> tuple[dict[str, list[TorrentRef]], dict[int, bytes], dict[int, int]]:
        torrents: dict[str, list[TorrentRef]] = {}
        with self.db.session() as session:
            rows = session.execute(
                select(
                    Torrent.id,
                    Torrent.study_id,
                    Torrent.title_id,
                    Torrent.infohash_v1,
                    Torrent.infohash_v2,
                )
            )
            for tid, study, title, v1, v2 in rows:
                ref = TorrentRef(tid, study, title)
                for ih in (v1, v2):
                    if ih:
                        torrents.setdefault(ih.lower(), []).append(ref)
            keys = active_study_keys(session, self.custody)
            metros = metro_map(session.connection()) if want_metros else {}
        return torrents, keys, metros

    def _record_geoip(self) -> None:
        geo = self.geolocator
        self.writer.record_geoip("city", geo.metadata, embedded=is_embedded(geo.city_db))
        if geo.asn_metadata is not None:
            self.writer.record_geoip("asn", geo.asn_metadata, embedded=False)

    # -- stage 1 and 2: coalesce, geolocate, anonymise, bin ------------------------------

    async def _run_prepare(self) -> None:
        while True:
            if not (self._force or self._stop) and len(self._items) < self.batch_size:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._force = False
            if (
                not self._items
                and not self._samples
                and not self._marks
                and (self._stop or not self._unknown_samples)
            ):
                if self._stop:
                    self.stats.unknown_samples += len(self._unknown_samples)
                    self._unknown_samples.clear()
                    await self._write_q.put(None)
                    return
                continue
            # A full write queue means the writer is behind: fewer, larger transactions
            # then cost it less per row (a commit writes every page a batch dirtied, and
            # random peer keys dirty about a page a row however few rows there are).
            take = self.batch_size * (BEHIND_BATCH_FACTOR if self._write_q.full() else 1)
            items = self._items[:take]
            del self._items[:take]
            samples, self._samples = self._samples, []
            self._items_taken += len(items)
            mark: ReplayMark | None = None
            marks = 0
            while self._marks and self._marks[0][0] <= self._items_taken:
                mark = self._marks.popleft()[1]
                marks += 1
            self._space.set()
            self._taken_seq += len(items) + len(samples) + marks
            seq = self._taken_seq
            try:
                batch = await self._prepare(items, samples)
                batch.mark = mark
            except Exception as exc:  # a bug must not stop the crawl; no address in the log
                log.error("pipeline: a batch could not be prepared (%s)", type(exc).__name__)
                self.stats.lost += len(items)
                batch = WriteBatch()
            await self._write_q.put((batch, seq))
            if self._items and (len(self._items) >= self.batch_size or self._force):
                self._wake.set()

    async def _prepare(self, items: list[PeerSighting], samples: list[SampleRecord]) -> WriteBatch:
        stats = self.stats
        stats.received += len(items)
        batch = WriteBatch()
        now = time.monotonic()
        if now - self._refreshed_at > self.refresh_seconds:
            await self._refresh_while_preparing()
        torrents = self._torrents
        # Samples too: a just-registered torrent's first announces (and refusals of its
        # non-loopback trackers) are stored, not dropped as unknown.
        unknown = (
            bool(self._unknown_samples)
            or any(s.infohash not in torrents for s in items)
            or any(s.infohash.lower() not in torrents for s in samples)
        )
        if unknown and (now - self._refreshed_at > UNKNOWN_REFRESH_SECONDS):
            await self._refresh_while_preparing()
            torrents = self._torrents

        held, self._unknown_samples = self._unknown_samples, []
        for sample, since in [*held, *((x, now) for x in samples)]:
            refs = torrents.get(sample.infohash.lower())
            if not refs:
                # Registered a moment ago, after the last re-read: tried again with the
                # next batches, and dropped (counted) only if still unknown after that.
                if now - since < UNKNOWN_SAMPLE_HOLD_SECONDS:
                    self._unknown_samples.append((sample, since))
                else:
                    stats.unknown_samples += 1
                continue
            batch.samples.extend((ref.torrent_id, sample) for ref in refs)
            stats.samples += 1

        window = self.window_seconds
        coalesce = self._coalesce
        # The sightings kept, their address keys and torrents (lists, not a tuple each).
        kept: list[PeerSighting] = []
        kept_keys: list[int] = []
        kept_refs: list[list[TorrentRef]] = []
        for s in items:
            refs = torrents.get(s.infohash)
            if refs is None:
                stats.unknown_infohash += 1
                continue
            seen = s.seen_at
            if seen.tzinfo is None:
                stats.invalid += 1
                continue
            ip = s.ip
            key = int(ip)
            if isinstance(ip, IPv6Address):  # (ip.version is a Python-level property)
                key = key & 0xFFFFFFFF if key >> 32 == 0xFFFF else key | V6_FLAG
            bucket = int(seen.timestamp()) // window
            members = coalesce.get(bucket)
            if members is None:
                members = self._open_window(bucket)
            # Only str, int and None: the garbage collector stops tracking such a tuple,
            # and a window holds one per peer (a Source member would keep it tracked).
            ckey = (s.infohash, key, _SOURCE_NAME[s.source], s.vantage, s.seed)
            if ckey in members:
                stats.coalesced += 1
                continue
            members.add(ckey)
            self._coalesce_size += 1
            kept.append(s)
            kept_keys.append(key)
            kept_refs.append(refs)

        places, lookups = await self.geolocator.place_batch(kept_keys)
        stats.geo_lookups += lookups

        study_keys = self._keys
        rows = batch.sightings
        # Column appends bound once: a batch is thousands of rows.
        add_study, add_title, add_torrent = (
            rows.study_id.append, rows.title_id.append, rows.torrent_id.append,
        )  # fmt: skip
        add_key, add_seen, add_source = (
            rows.peer_key.append,
            rows.seen_at.append,
            rows.source.append,
        )
        add_vantage, add_seed, add_country = (
            rows.vantage.append,
            rows.seed.append,
            rows.country.append,
        )
        add_geoname, add_metro, add_cell, add_asn = (
            rows.geoname_id.append, rows.metro_id.append, rows.h3_cell.append, rows.asn.append,
        )  # fmt: skip
        for s, key, refs, place in zip(kept, kept_keys, kept_refs, places, strict=True):
            packed = packed_key(key)
            source = str(s.source)
            for ref in refs:
                secret = study_keys.get(ref.study_id)
                if secret is None:
                    stats.sealed += 1
                    continue
                add_study(ref.study_id)
                add_title(ref.title_id)
                add_torrent(ref.torrent_id)
                add_key(peer_key(secret, packed))
                add_seen(s.seen_at)
                add_source(source)
                add_vantage(s.vantage)
                add_seed(s.seed)
                add_country(place.country)
                add_geoname(place.geoname_id)
                add_metro(place.metro_id)
                add_cell(place.h3_cell)
                add_asn(place.asn)
                if place.anomaly is not None:
                    batch.add_anomaly(
                        ref.torrent_id, ref.study_id, source, place.anomaly, s.seen_at
                    )
        # The writer's pure-Python part of the batch, done here: this stage runs while
        # the writer thread is inside the database with the GIL released.
        prepared = self.writer.prepare(batch)
        if prepared.unknown_vantages:  # a vantage new to the writer: learnt now, once
            try:
                await asyncio.to_thread(self.writer.learn_vantages, prepared.unknown_vantages)
            except Exception as exc:  # the writer learns it itself when the database is back
                log.warning("pipeline: vantages not registered yet (%s)", type(exc).__name__)
            else:
                batch.prepared = None
                self.writer.prepare(batch)
        return batch

    def _open_window(self, bucket: int) -> set[tuple[Any, ...]]:
        """A new coalescing window; windows two or more behind the newest are let go."""
        coalesce = self._coalesce
        if self._coalesce_size > COALESCE_MAX_ENTRIES:
            coalesce.clear()
            self._coalesce_size = 0
        newest = max(coalesce, default=bucket)
        for old in [b for b in coalesce if b < max(newest, bucket) - 1]:
            self._coalesce_size -= len(coalesce.pop(old))
        members: set[tuple[Any, ...]] = set()
        coalesce[bucket] = members
        return members

    # -- stage 3: the writer -------------------------------------------------------------

    async def _run_write(self) -> None:
        while True:
            item = await self._write_q.get()
            if item is None:
                return
            batch, seq = item
            if batch:
                result = await self._write(batch)
                if result is not None:
                    self.stats.batches += 1
                    self.stats.stored += result.sightings
                    self.stats.new_peers += result.new_peers
                    self.stats.anomalies += result.anomalies
                    log.debug(
                        "pipeline: wrote %d sightings (%d new peers, %d anomalies, %d samples)",
                        result.sightings,
                        result.new_peers,
                        result.anomalies,
                        result.samples,
                    )
            async with self._done:
                self._done_seq = seq
                self._done.notify_all()

    async def _write(self, batch: WriteBatch) -> WriteResult | None:
        """Write one batch: retry while the database is away, drop only what cannot fit."""
        stats = self.stats
        other_failures = 0
        backoff = WRITE_BACKOFF_FIRST_SECONDS
        while True:
            try:
                return await asyncio.to_thread(self.writer.write, batch)
            except Exception as exc:  # the batch holds no address; messages may hold keys
                stats.write_errors += 1
                kind = write_failure_kind(exc)
                if kind == "data":
                    stats.lost += len(batch.sightings)
                    log.error(
                        "pipeline: the database rejected a batch of %d sightings (%s); dropped",
                        len(batch.sightings),
                        type(exc).__name__,
                    )
                    return None
                if kind == "other":
                    other_failures += 1
                    if other_failures >= WRITE_ATTEMPTS:
                        stats.lost += len(batch.sightings)
                        log.error(
                            "pipeline: a batch of %d sightings failed %d times (%s); dropped",
                            len(batch.sightings),
                            other_failures,
                            type(exc).__name__,
                        )
                        return None
                else:
                    stats.write_retries += 1
                # Names only: a driver's message can quote parameters (peer keys).
                log.warning(
                    "pipeline: writing a batch of %d sightings failed (%s); retrying in %.1f s",
                    len(batch.sightings),
                    type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, WRITE_BACKOFF_MAX_SECONDS)


def write_failure_kind(exc: BaseException) -> str:
    """ "unavailable" (retry until it works), "data" (never will: drop) or "other".

    The database going away shows up as OperationalError or InterfaceError (psycopg,
    sqlite3 "database is locked"), a pool timeout, a disconnect, or an uncertain
    commit; integrity and data errors are the rows' own fault.
    """
    if isinstance(exc, CommitUncertain | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return "unavailable"
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return "unavailable"
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return "unavailable"
        if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
            return "data"
    if isinstance(exc, ConnectionError):
        return "unavailable"
    return "other"


__all__ = [
    "BEHIND_BATCH_FACTOR",
    "SIGHTING_WINDOW_SECONDS",
    "Pipeline",
    "PipelineClosed",
    "PipelineStats",
    "TorrentRef",
    "write_failure_kind",
]
