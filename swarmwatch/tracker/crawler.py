"""The tracker crawler: keeps every watched torrent's trackers announced, politely.

Per torrent, per BEP 12 tier and per crawl identity one task announces to the
first working tracker of the tier, re-announces after max(min interval (or
interval), politeness floor), backs off exponentially on failure, and turns each
announce into a SampleRecord and each peer into a PeerSighting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from swarmwatch.clock import Clock, SystemClock
from swarmwatch.config import Settings, get_settings
from swarmwatch.crawl import TorrentSource, WatchedTorrent
from swarmwatch.netsafety import DestinationRefused, check_destination
from swarmwatch.ownendpoints import OwnEndpoints
from swarmwatch.sightings import PeerSighting, SampleRecord, SightingSink, Source
from swarmwatch.tracker.client import AnnounceResult, CrawlIdentity, Event, TrackerClient
from swarmwatch.tracker.exceptions import TrackerError

log = logging.getLogger(__name__)

#: First retry delay after a failure (doubles per failure, capped at max_interval).
BACKOFF_BASE = 60.0
#: Seconds between re-reading the TorrentSource: new registrations start within a minute.
REFRESH_SECONDS = 60.0
#: Announces in flight at once across all swarms: bounded like every queue here.
MAX_CONCURRENT = 32
#: Wall seconds a best-effort event=stopped may take at shutdown.
STOP_TIMEOUT = 2.0
#: The politeness floor no setting can undercut: whatever a tracker answers (interval 0)
#: and however SWARMWATCH_TRACKER_MIN_INTERVAL is set, one tier of one swarm announces
#: at most this often. alpha60 re-announced every 30 s; compressed test cadences need less.
HARD_MIN_INTERVAL = 5.0
#: Announce slots one tracker host may hold at once: hosts that answer slowly (or
#: trickle bytes until the deadline) cannot take every slot from the others.
MAX_PER_HOST = 4


@dataclass
class _TrackerState:
    url: str
    failures: int = 0
    retry_at: datetime | None = None
    started: bool = False
    disabled: bool = False


def _tracker_infohash(t: WatchedTorrent) -> bytes | None:
    if t.infohash_v1:
        return bytes.fromhex(t.infohash_v1)
    if t.infohash_v2:
        return bytes.fromhex(t.infohash_v2)[:20]  # BEP 52: trackers take the truncated v2 hash
    return None


class TrackerCrawler:
    """Crawler (swarmwatch.crawl) over HTTP and UDP trackers; see module docstring."""

    name = "tracker"

    def __init__(
        self,
        *,
        http: TrackerClient | None = None,
        udp: TrackerClient | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        min_interval_floor: float | None = None,
        max_interval: float | None = None,
        numwant: int | None = None,
        identities: int = 1,
        vantage: str | None = None,
        refresh: float = REFRESH_SECONDS,
        backoff_base: float = BACKOFF_BASE,
        max_concurrent: int = MAX_CONCURRENT,
        scrape: bool = True,
        seed: int | None = None,
        own: OwnEndpoints | None = None,
        deadline: float | None = None,
        max_per_host: int = MAX_PER_HOST,
    ) -> None:
        s = settings or get_settings()
        self.loopback_only = s.loopback_only
        if http is None:
            from swarmwatch.tracker.http import HttpTrackerClient

            http = HttpTrackerClient(loopback_only=s.loopback_only)
        if udp is None:
            from swarmwatch.tracker.udp import UdpTrackerClient

            udp = UdpTrackerClient(loopback_only=s.loopback_only)
        self.http, self.udp = http, udp
        self.clock: Clock = clock or SystemClock()
        floor = s.tracker_min_interval if min_interval_floor is None else min_interval_floor
        self.floor = max(HARD_MIN_INTERVAL, floor)
        self.max_interval = s.tracker_max_interval if max_interval is None else max_interval
        self.numwant = numwant or s.tracker_numwant
        self.identities = [CrawlIdentity.fresh() for _ in range(max(1, identities))]
        self.own = own if own is not None else OwnEndpoints()
        for identity in self.identities:
            self.own.add_port(identity.port)  # trackers list us at the port we announce
        # The whole request, connect to last byte (and every UDP retransmit) within this.
        self.deadline = s.tracker_timeout if deadline is None else deadline
        self.max_per_host = max_per_host
        self.vantage = vantage or s.vantage
        self.refresh = refresh
        self.backoff_base = backoff_base
        self.scrape = scrape
        self.rng = random.Random(seed)
        self.counters: Counter[str] = Counter()
        self._sem = asyncio.Semaphore(max_concurrent)
        self._host_sems: dict[str, asyncio.Semaphore] = {}
        # Refused or unsupported URLs stay off for the crawler's life: a restarted tier
        # task must not record the same refusal again every refresh.
        self._disabled: set[str] = set()

    def _client(self, url: str) -> TrackerClient | None:
        scheme = urlsplit(url).scheme
        if scheme == "udp":
            return self.udp
        if scheme in ("http", "https"):
            return self.http
        return None

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        if seconds <= 0 or stop.is_set():
            await asyncio.sleep(0)
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    async def run(self, torrents: TorrentSource, sink: SightingSink, stop: asyncio.Event) -> None:
        jobs: dict[tuple[str, int, int], asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                try:
                    watched = await torrents()
                except Exception as e:  # the registry being down must not stop crawling
                    self.counters["error:torrent_source"] += 1
                    log.warning("torrent source failed: %s", type(e).__name__)
                    watched = None
                if watched is not None:
                    wanted = self._plan(watched)
                    for key in list(jobs):
                        if key not in wanted:
                            jobs.pop(key).cancel()
                    for key, (ih, urls) in wanted.items():
                        if key not in jobs or jobs[key].done():
                            jobs[key] = asyncio.create_task(
                                self._run_tier(
                                    key[0], ih, urls, self.identities[key[2]], sink, stop
                                )
                            )
                await self._sleep(self.refresh, stop)
        finally:
            if jobs:
                # Tier tasks see stop and send their best-effort event=stopped.
                done, pending = await asyncio.wait(jobs.values(), timeout=STOP_TIMEOUT * 2)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*jobs.values(), return_exceptions=True)

    def _plan(
        self, watched: Sequence[WatchedTorrent]
    ) -> dict[tuple[str, int, int], tuple[bytes, list[str]]]:
        plan: dict[tuple[str, int, int], tuple[bytes, list[str]]] = {}
        for t in watched:
            ih = _tracker_infohash(t)
            if ih is None or not t.trackers:
                continue
            tiers: dict[int, list[str]] = defaultdict(list)
            for url, tier in t.trackers:
                if url not in tiers[tier]:
                    tiers[tier].append(url)
            for tier, urls in tiers.items():
                for k in range(len(self.identities)):
                    plan[(t.infohash, tier, k)] = (ih, urls)
        return plan

    async def _run_tier(
        self,
        infohash: str,
        ih: bytes,
        urls: list[str],
        identity: CrawlIdentity,
        sink: SightingSink,
        stop: asyncio.Event,
    ) -> None:
        """BEP 12 within one tier: shuffle once, use the first that works, promote it."""
        order = [_TrackerState(u, disabled=u in self._disabled) for u in urls]
        self.rng.shuffle(order)
        try:
            while not stop.is_set():
                live = [st for st in order if not st.disabled]
                if not live:
                    return
                now = self.clock.now()
                ready = [st for st in live if st.retry_at is None or st.retry_at <= now]
                if not ready:
                    wait = min((st.retry_at - now).total_seconds() for st in live if st.retry_at)
                    await self._sleep(wait, stop)
                    continue
                st = ready[0]
                delay = await self._announce(infohash, ih, st, identity, sink)
                if delay is not None:
                    order.remove(st)
                    order.insert(0, st)
                    await self._sleep(delay, stop)
        finally:
            await self._send_stopped(ih, order, identity)

    async def _send_stopped(
        self, ih: bytes, order: list[_TrackerState], identity: CrawlIdentity
    ) -> None:
        for st in order:
            client = self._client(st.url)
            if not st.started or st.disabled or client is None:
                continue
            try:
                await asyncio.wait_for(
                    client.announce(st.url, ih, identity, numwant=0, event=Event.STOPPED),
                    STOP_TIMEOUT,
                )
                self.counters["stopped_sent"] += 1
            except (TrackerError, DestinationRefused, TimeoutError, OSError):
                self.counters["stopped_failed"] += 1

    async def _announce(
        self,
        infohash: str,
        ih: bytes,
        st: _TrackerState,
        identity: CrawlIdentity,
        sink: SightingSink,
    ) -> float | None:
        """One announce; returns the delay before the next one, or None after a failure."""
        started = self.clock.now()
        result: AnnounceResult | None = None
        error: str | None = None
        client = self._client(st.url)
        host = (urlsplit(st.url).hostname or "").lower()
        try:
            if client is None:
                st.disabled = True
                self._disabled.add(st.url)
                raise TrackerError("unsupported tracker URL scheme")
            # Checked here as well as in the clients: a refusal must precede any packet,
            # whatever client was injected.
            check_destination(host, loopback_only=self.loopback_only, what="tracker")
            event = Event.NONE if st.started else Event.STARTED
            # The host's slot first: a host holding all of its slots waits without
            # taking a shared one that another host could use.
            async with self._host_slot(host), self._sem, asyncio.timeout(self.deadline):
                result = await client.announce(
                    st.url, ih, identity, numwant=self.numwant, event=event
                )
            st.started = True
            self.own.add_address(result.external_ip or "")
            self.own.add_address(result.local_ip or "")
        except DestinationRefused as e:
            st.disabled = True  # policy, not a fault: retrying cannot help
            self._disabled.add(st.url)
            error = f"refused: {e}"
            self.counters["error:refused"] += 1
        except TrackerError as e:
            error = f"{e.kind}: {e}"
            self.counters[f"error:{e.kind}"] += 1
        except TimeoutError:
            error = "timeout: no answer within the request deadline"
            self.counters["error:timeout"] += 1
        except (OSError, ValueError) as e:
            error = f"network: {type(e).__name__}"
            self.counters["error:network"] += 1
        finished = self.clock.now()

        if result is None:
            st.failures += 1
            if st.failures == 1:  # once per outage: a worker's log says a tracker went away
                # Host and port only: a private tracker's path carries the user's passkey.
                where = urlsplit(st.url)
                server = f"{where.hostname}:{where.port}" if where.port else where.hostname
                log.warning("tracker %s://%s failing: %s", where.scheme, server, error)
            backoff = min(self.backoff_base * 2 ** (st.failures - 1), self.max_interval)
            backoff = max(backoff, self.floor) * self.rng.uniform(0.9, 1.1)
            st.retry_at = finished + _seconds(backoff)
            await sink.put_sample(
                SampleRecord(
                    infohash=infohash,
                    source=Source.TRACKER,
                    vantage=self.vantage,
                    started_at=started,
                    finished_at=finished,
                    tracker_url=st.url,
                    error=error,
                )
            )
            return None

        st.failures = 0
        self.counters["announce_ok"] += 1
        self.counters["peers_returned"] += len(result.peers)
        seeders, leechers = result.seeders, result.leechers
        if (seeders is None or leechers is None) and self.scrape and client is not None:
            try:
                async with self._host_slot(host), self._sem, asyncio.timeout(self.deadline):
                    stats = (await client.scrape(st.url, [ih])).get(ih)
                if stats is not None:
                    seeders, leechers = stats.complete, stats.incomplete
            except (TrackerError, DestinationRefused, OSError, ValueError, TimeoutError):
                self.counters["scrape_failed"] += 1
        for ip, port in result.peers:
            await sink.put(
                PeerSighting(
                    infohash=infohash,
                    ip=ip,
                    port=port,
                    source=Source.TRACKER,
                    vantage=self.vantage,
                    seen_at=finished,
                )
            )
        await sink.put_sample(
            SampleRecord(
                infohash=infohash,
                source=Source.TRACKER,
                vantage=self.vantage,
                started_at=started,
                finished_at=finished,
                peers_returned=len(result.peers),
                seeders=seeders,
                leechers=leechers,
                tracker_url=st.url,
                interval=result.interval,
                min_interval=result.min_interval,
            )
        )
        # min interval is the tracker's hard limit (BEP 3 extension); without one, interval is.
        wanted = result.min_interval if result.min_interval is not None else result.interval
        delay = min(max(float(wanted), self.floor), self.max_interval)
        st.retry_at = finished + _seconds(delay)
        return max(delay, self.floor)

    def _host_slot(self, host: str) -> asyncio.Semaphore:
        sem = self._host_sems.get(host)
        if sem is None:
            sem = self._host_sems[host] = asyncio.Semaphore(self.max_per_host)
        return sem

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.udp.aclose()


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


__all__ = ["BACKOFF_BASE", "TrackerCrawler"]
