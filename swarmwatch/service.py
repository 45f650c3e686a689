"""The crawl service: registered torrents → crawlers → pipeline → database.

Runs inside `swarmwatch serve` (attached to the API's lifespan) or alone as
`swarmwatch crawl`. Crawlers, leases and the pipeline are wired here and
nowhere else; a crawler that fails is restarted, never allowed to stop the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI

from swarmwatch import registry
from swarmwatch.config import Settings
from swarmwatch.crawl import Crawler, TorrentSource, WatchedTorrent
from swarmwatch.metrics import CountingSink, ServiceMetrics
from swarmwatch.ownendpoints import ExcludeOwnSink, OwnEndpoints, withdraw
from swarmwatch.sightings import PeerSighting, SampleRecord, SightingSink, Source
from swarmwatch.store import Database, leases

log = logging.getLogger(__name__)

#: A crashed crawler is restarted after this long, doubling up to RESTART_MAX_SECONDS.
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
#: How long crawlers get to stop before their tasks are cancelled.
STOP_GRACE_SECONDS = 10.0
#: Crawler names, for --crawlers and the settings.
CRAWLER_NAMES = ("tracker", "dht", "swarm")


def build_crawlers(
    settings: Settings,
    db: Database,
    names: Sequence[str] = CRAWLER_NAMES,
    *,
    own: OwnEndpoints | None = None,
) -> list[Crawler]:
    """The crawlers asked for, configured from settings, reporting their endpoints to own."""
    own = own if own is not None else OwnEndpoints()
    crawlers: list[Crawler] = []
    for name in names:
        if name == "tracker":
            from swarmwatch.tracker.crawler import REFRESH_SECONDS, TrackerCrawler

            # Re-read the leased swarms every heartbeat: a swarm taken over from a dead
            # worker (or handed back to a new one) changes hands then, not a minute later.
            refresh = min(REFRESH_SECONDS, settings.lease_heartbeat_seconds)
            crawlers.append(TrackerCrawler(settings=settings, refresh=refresh, own=own))
        elif name == "dht":
            from swarmwatch.dht.crawler import DhtCrawler

            crawlers.append(DhtCrawler(settings=settings, own=own))
        elif name == "swarm":
            from swarmwatch.ltsession.crawler import SwarmSessionCrawler

            crawlers.append(
                SwarmSessionCrawler(settings=settings, on_metadata=_metadata_writer(db), own=own)
            )
        else:
            raise ValueError(f"unknown crawler {name!r}; choose from {', '.join(CRAWLER_NAMES)}")
    return crawlers


def _metadata_writer(db: Database) -> Any:
    """BEP 9 metadata from the swarm session fills in magnet-registered torrents."""

    async def on_metadata(infohash: str, name: str, size: int, info: bytes) -> None:
        def write() -> int:
            with db.session() as session:
                return registry.record_metadata(session, infohash, name, size, info)

        n = await asyncio.to_thread(write)
        log.info("metadata for %s: %d registration(s) completed", infohash, n)

    return on_metadata


class CrawlService:
    """Crawlers feeding one pipeline, over the swarms this worker holds leases on."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        crawlers: list[Crawler] | None = None,
        metrics: ServiceMetrics | None = None,
        sink: SightingSink | None = None,
        use_leases: bool = True,
        heartbeat_seconds: float | None = None,
        lease_seconds: float | None = None,
        own: OwnEndpoints | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.vantage = settings.vantage
        # Every crawler's own endpoints, and (through the database) every sibling's.
        self.own = own if own is not None else OwnEndpoints()
        self.crawlers = (
            crawlers if crawlers is not None else build_crawlers(settings, db, own=self.own)
        )
        for crawler in self.crawlers:  # crawlers built apart report to their own
            part = getattr(crawler, "own", None)
            if isinstance(part, OwnEndpoints):
                self.own.include(part)
        self.metrics = metrics or ServiceMetrics()
        self._sink = sink
        self.use_leases = use_leases
        self.heartbeat_seconds = heartbeat_seconds or settings.lease_heartbeat_seconds
        self.lease_seconds = lease_seconds or settings.lease_seconds
        self.worker_id = leases.new_worker_id(self.vantage)
        self.held: frozenset[str] = frozenset()
        self.running: dict[str, bool] = {c.name: False for c in self.crawlers}
        self.restarts: dict[str, int] = {c.name: 0 for c in self.crawlers}
        self.pipeline: Any = None
        self._leased_once = asyncio.Event()
        self.last_heartbeat = 0.0

    # -- what the API shows -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        alive = bool(self.crawlers) and all(self.running.values())
        return {
            "alive": alive,
            "vantage": self.vantage,
            "worker": self.worker_id,
            "crawlers": dict(self.running),
            "restarts": dict(self.restarts),
            "leases": len(self.held),
        }

    # -- the torrents each crawler sees -------------------------------------------------------

    def _read_registry(self) -> list[WatchedTorrent]:
        with self.db.session() as session:
            return registry.watched_torrents(session)

    def torrent_source(self) -> TorrentSource:
        async def source() -> list[WatchedTorrent]:
            watched = await asyncio.to_thread(self._read_registry)
            if not self.use_leases:
                return watched
            return [w for w in watched if w.infohash in self.held]

        return source

    async def heartbeat_once(self) -> leases.LeaseRound:
        def beat() -> leases.LeaseRound:
            watched = self._read_registry()
            with self.db.session() as session:
                return leases.heartbeat(
                    session,
                    self.worker_id,
                    self.vantage,
                    [w.infohash for w in watched],
                    lease_seconds=self.lease_seconds,
                )

        result = await asyncio.to_thread(beat)
        if result.held != self.held:
            log.info(
                "worker %s holds %d swarm(s) (claimed %d, released %d, %d live worker(s))",
                self.worker_id,
                len(result.held),
                result.claimed,
                result.released,
                result.live_workers,
            )
        self.held = result.held
        self.last_heartbeat = time.monotonic()
        self._leased_once.set()
        if self.pipeline is not None:
            # Counts only (never an address): after a kill -9 the last of these lines
            # bounds what the worker had committed and what it still held in memory.
            stats = self.pipeline.stats
            log.info(
                "worker %s pipeline: received %d, stored %d, lost %d, queue %d",
                self.worker_id,
                stats.received,
                stats.stored,
                stats.lost,
                self.pipeline.queue_depth,
            )
        return result

    async def exchange_endpoints(self) -> int:
        """Publish this worker's endpoints and learn every live worker's (ownendpoints)."""

        def exchange() -> int:
            with self.db.session() as session:
                return self.own.exchange(session, self.worker_id, ttl_seconds=self.lease_seconds)

        return await asyncio.to_thread(exchange)

    async def _run_endpoint_exchange(self, stop: asyncio.Event) -> None:
        # Soon after start (the session's listen port and the trackers' view of our
        # address arrive within seconds), then at every heartbeat.
        delay = 1.0
        while not stop.is_set():
            try:
                await self.exchange_endpoints()
            except Exception as exc:  # database away: keep excluding what we know
                log.warning("endpoint exchange failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, self.heartbeat_seconds)

    async def _run_heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.heartbeat_once()
            except Exception as exc:  # database away: keep the leases we have until it's back
                log.warning("lease heartbeat failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_seconds)

    # -- running ---------------------------------------------------------------------------

    async def _supervise(
        self, crawler: Crawler, source: TorrentSource, sink: SightingSink, stop: asyncio.Event
    ) -> None:
        delay = RESTART_MIN_SECONDS
        while not stop.is_set():
            self.running[crawler.name] = True
            started = time.monotonic()
            try:
                await crawler.run(source, sink, stop)
                if stop.is_set():
                    break
                log.warning("crawler %s returned before stop; restarting", crawler.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a crawler bug must not stop the others
                log.error("crawler %s failed: %s; restarting", crawler.name, type(exc).__name__)
            finally:
                self.running[crawler.name] = False
            self.restarts[crawler.name] += 1
            if time.monotonic() - started > RESTART_MAX_SECONDS:
                delay = RESTART_MIN_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, RESTART_MAX_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        """Crawl until stop is set; then stop the crawlers, flush the pipeline, give back leases."""
        from swarmwatch.pipeline.pipeline import Pipeline

        pipeline: Pipeline | None = None
        inner: SightingSink
        if self._sink is not None:
            inner = self._sink
        else:
            # One geolocation worker process: the second core does the lookups.
            pipeline = self.pipeline = Pipeline(self.db, settings=self.settings, geo_workers=1)
            await pipeline.start()
            self.metrics.watch_pipeline(pipeline.stats.as_dict)
            self.metrics.watch_queue(lambda: float(pipeline.queue_depth))
            self.metrics.watch_anomalies(lambda: float(pipeline.stats.anomalies))
            inner = pipeline
        # Our own endpoints are dropped before anything counts them; tracker and DHT
        # answers also tell the swarm session where to dial a peer again.
        hints = [h for c in self.crawlers if (h := getattr(c, "hint", None)) is not None]
        sink = CountingSink(ExcludeOwnSink(HintingSink(inner, hints), self.own), self.metrics)
        self.metrics.watch_own_excluded(lambda: float(self.own.excluded))
        self.metrics.watch_coverage(self.coverage)
        exchange = asyncio.create_task(self._run_endpoint_exchange(stop), name="own-endpoints")
        heartbeat = None
        if self.use_leases:
            heartbeat = asyncio.create_task(self._run_heartbeats(stop), name="lease-heartbeat")
            await asyncio.wait(
                [asyncio.create_task(self._leased_once.wait()), asyncio.create_task(stop.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        source = self.torrent_source()
        self.metrics.crawlers_alive.set_function(lambda: float(sum(self.running.values())))
        tasks = [
            asyncio.create_task(self._supervise(c, source, sink, stop), name=f"crawl-{c.name}")
            for c in self.crawlers
        ]
        try:
            await stop.wait()
        finally:
            stop.set()
            done, pending = (
                await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
                if tasks
                else (
                    set(),
                    set(),
                )
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for crawler in self.crawlers:
                try:
                    await crawler.aclose()
                except Exception as exc:  # closing must not keep the pipeline from flushing
                    log.warning("closing crawler %s: %s", crawler.name, type(exc).__name__)
            if heartbeat is not None:
                await asyncio.gather(heartbeat, return_exceptions=True)
            await asyncio.gather(exchange, return_exceptions=True)
            if pipeline is not None:
                await pipeline.close()  # everything accepted is written before we return
            if self.use_leases:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self.db.session() as session:
            leases.release_all(session, self.worker_id)
            withdraw(session, self.worker_id)

    def coverage(self) -> tuple[int, int]:
        """(peers sighted in the last swarm round, peers known and reachable)."""
        sighted = known = 0
        for crawler in self.crawlers:
            report = getattr(crawler, "coverage", None)
            if report is not None:
                s, k = report()
                sighted, known = sighted + s, known + k
        return sighted, known


class HintingSink:
    """Hands every tracker and DHT sighting (a listen endpoint) to the given hint
    callbacks too, in memory, then on to the inner sink."""

    def __init__(self, inner: SightingSink, hints: list[Callable[[PeerSighting], None]]) -> None:
        self.inner = inner
        self.hints = hints

    async def put(self, sighting: PeerSighting) -> None:
        if sighting.source in (Source.TRACKER, Source.DHT):
            for hint in self.hints:
                hint(sighting)
        await self.inner.put(sighting)

    async def put_sample(self, sample: SampleRecord) -> None:
        await self.inner.put_sample(sample)


def attach_crawl_service(app: FastAPI, settings: Settings, db: Database) -> CrawlService:
    """Run a crawl service for as long as the API serves; /healthz reports on it."""
    service = CrawlService(settings, db, metrics=app.state.metrics)
    app.state.crawl_status = service.status
    parent = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop), name="crawl-service")
        async with parent(application) as state:
            yield state
        stop.set()
        await task

    app.router.lifespan_context = lifespan
    return service
