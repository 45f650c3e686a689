"""Interoperability with real third-party clients (issue 14): the counts must match them.

Two Transmission daemons, two aria2c processes and two rtorrent daemons from Debian,
each on its own 127.0.0.x address, share one torrent behind a real opentracker: one of
each kind seeds, one of each leeches (every client uploads at 4 KB/s at most, so a leecher
stays one), and the aria2
pair runs a Mainline DHT. A study registers the torrent by magnet only (k = 1) and the
crawl service runs the tracker, DHT and swarm-session crawlers on it for a few
minutes at a compressed cadence (5 s rounds), through the real pipeline into a
real database. Then, exactly:
- unique peers == 6 (opentracker lists the crawler itself: it must not count);
- seeds 3, leechers 3, unknown 0;
- every client connected and sighted by the swarm session in each of the last rounds,
  so the last rounds' coverage is six sighted of six known and reachable;
- the metadata arrived by magnet, and each seed and leecher alone serves it too
  (BEP 9);
- no payload byte moved to or from the crawler.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from swarmwatch import bencode, registry
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.analysis.summary import compute_summary
from swarmwatch.config import get_settings
from swarmwatch.crawl import WatchedTorrent, static_torrents
from swarmwatch.dht.crawler import DhtCrawler
from swarmwatch.ltsession.crawler import SwarmSessionCrawler
from swarmwatch.service import CrawlService, _metadata_writer
from swarmwatch.sightings import MemorySink, PeerSighting, SampleRecord, SightingSink
from swarmwatch.store import Database
from swarmwatch.store.models import Sample, Study, Torrent
from swarmwatch.tracker import HttpTrackerClient
from swarmwatch.tracker.client import CrawlIdentity, Event
from swarmwatch.tracker.crawler import TrackerCrawler
from tests.pipeline_fixtures import write_city_db
from tests.realclients import (
    MISSING,
    Client,
    free_port,
    start_aria2,
    start_opentracker,
    start_rtorrent,
    start_transmission,
)
from tests.torrent_files import make_torrent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"Debian packages missing: {MISSING}"),
]

#: Seconds of crawling: long enough for connections to drop and be made again, and for
#: 20+ rounds; settable for a longer soak (SWARMWATCH_INTEROP_SECONDS=540 is the issue's).
CRAWL_SECONDS = float(os.environ.get("SWARMWATCH_INTEROP_SECONDS", "100"))
#: The compressed cadence: swarm rounds and the tracker's politeness floor.
ROUND_SECONDS = 5.0
#: "Late rounds": every client must be sighted again within this many of the last ones.
LATE_ROUNDS = 3
#: Whole rounds before this one may still be connecting to the clients (all are by ~2 s).
STEADY_FROM_ROUND = 3
#: BEP 9 from each client alone: the deadline for its answer.
METADATA_SECONDS = 30.0
#: Payload: big enough that a leecher fed by five peers at 4 KB/s each stays a leecher for
#: the whole crawl, even the issue's 9-minute one.
PAYLOAD_BYTES = 16 * 1024 * 1024


@dataclass
class Swarm:
    infohash: str
    tracker_url: str
    torrent: Path
    clients: list[Client]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("interop")
    root.chmod(0o755)
    port = free_port()  # opentracker's, known before the torrent names it
    tracker_url = f"http://127.0.0.1:{port}/announce"
    payload = root / "payload"
    # v1 only: Transmission 3.00 does not speak BitTorrent v2.
    data = make_torrent(payload, "episode.bin", PAYLOAD_BYTES, (tracker_url,), v1_only=True)
    infohash = hashlib.sha1(bencode.encode(bencode.decode(data)[b"info"])).hexdigest()
    torrent = root / "episode.torrent"
    torrent.write_bytes(data)
    tracker, clients = None, []
    try:
        tracker, got = start_opentracker(root / "tracker", [infohash], port=port)
        assert got == port
        clients.append(start_transmission(root / "t-seed", "127.0.0.2", torrent, payload))
        clients.append(start_transmission(root / "t-leech", "127.0.0.3", torrent, None))
        seed = start_aria2(root / "a-seed", "127.0.0.4", torrent, payload, None)
        clients.append(seed)
        assert seed.dht_port is not None
        clients.append(
            start_aria2(root / "a-leech", "127.0.0.5", torrent, None, ("127.0.0.4", seed.dht_port))
        )
        clients.append(start_rtorrent(root / "r-seed", "127.0.0.6", torrent, payload))
        clients.append(start_rtorrent(root / "r-leech", "127.0.0.7", torrent, None))
        # Every client has announced before the crawl starts: opentracker asks for a
        # min interval of ~15 minutes, which the crawler honours, so a client that
        # announced after the crawler's first announce would reach it only by PEX.
        asyncio.run(_all_announced(tracker_url, infohash, {c.address for c in clients}))
        yield Swarm(infohash, tracker_url, torrent, clients)
    finally:
        for client in clients:
            client.stop()
        if tracker is not None:
            tracker.terminate()
            tracker.wait(10)


async def _all_announced(url: str, infohash: str, addresses: set[str]) -> None:
    client = HttpTrackerClient()
    identity = CrawlIdentity.fresh(port=free_port())
    try:
        async with asyncio.timeout(90):
            while True:
                result = await client.announce(url, bytes.fromhex(infohash), identity)
                if addresses <= {str(ip) for ip, _ in result.peers}:
                    break
                await asyncio.sleep(0.5)
        await client.announce(url, bytes.fromhex(infohash), identity, event=Event.STOPPED)
    finally:
        await client.aclose()


class _Tee:
    """A sink that keeps a copy of each sighting (test memory only) and hands it on."""

    def __init__(self, inner: SightingSink, saw: list[PeerSighting]) -> None:
        self.inner, self.saw = inner, saw

    async def put(self, sighting: PeerSighting) -> None:
        self.saw.append(sighting)
        await self.inner.put(sighting)

    async def put_sample(self, sample: SampleRecord) -> None:
        await self.inner.put_sample(sample)


def _dht_nodes(swarm: Swarm) -> list[tuple[str, int]]:
    return [(c.address, c.dht_port) for c in swarm.clients if c.dht_port is not None]


def test_each_client_serves_the_metadata_by_magnet(swarm: Swarm, tmp_path: Path) -> None:
    """BEP 9 from every client alone: a magnet naming only that client (x.pe), no tracker."""
    got: dict[str, str] = {}
    stats: dict[str, Any] = {}

    async def fetch(client: Client) -> None:
        async def record(infohash: str, name: str, size: int, info: bytes) -> None:
            got[client.address] = hashlib.sha1(info).hexdigest()

        # From an address of its own: the clients refuse a second connection to the
        # torrent from an address that has one, and the crawl before this one (or the
        # previous client's session, which met this client by PEX) dialled from 127.0.0.1.
        host = client.address.rsplit(".", 1)[1]
        crawler = SwarmSessionCrawler(
            on_metadata=record,
            enable_dht=False,
            listen_interfaces=f"127.0.1.{host}:0",
            save_path=tmp_path / client.address,
            resight_interval=1,
            poll_interval=0.2,
        )
        magnet = f"magnet:?xt=urn:btih:{swarm.infohash}&x.pe={client.address}:{client.peer_port}"
        torrent = WatchedTorrent(swarm.infohash, None, magnet=magnet)
        stop = asyncio.Event()
        task = asyncio.create_task(crawler.run(static_torrents([torrent]), MemorySink(), stop))
        deadline = time.monotonic() + METADATA_SECONDS
        while client.address not in got and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            assert not task.done(), task.exception()
        stop.set()
        await task
        stats[client.address] = crawler.stats
        assert crawler.stats.payload_bytes_down == crawler.stats.payload_bytes_up == 0

    async def all_clients() -> None:
        for client in swarm.clients:
            (tmp_path / client.address).mkdir()
            await fetch(client)

    asyncio.run(all_clients())
    # Every client, seeds and leechers, on the first try. The aria2 leecher used to answer
    # in about half the runs: capped at 4 KB/s down, aria2 reads no message from any peer
    # while it is over its cap (see realclients.start_aria2); it now has no download cap.
    assert {c.address: got.get(c.address) for c in swarm.clients} == {
        c.address: swarm.infohash for c in swarm.clients
    }, stats
    assert all(v == swarm.infohash for v in got.values())


def test_counts_match_the_real_clients(
    swarm: Swarm, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(write_city_db(tmp_path / "city.mmdb")))
    monkeypatch.setenv("SWARMWATCH_VANTAGE", "interop")
    monkeypatch.setenv("SWARMWATCH_SWARM_ROUND_SECONDS", str(ROUND_SECONDS))
    monkeypatch.setenv("SWARMWATCH_TRACKER_MIN_INTERVAL", str(ROUND_SECONDS))
    get_settings.cache_clear()
    settings = get_settings()
    with db.session() as session:
        study = registry.create_study(session, "interop", k_threshold=1)
        magnet = f"magnet:?xt=urn:btih:{swarm.infohash}&tr={swarm.tracker_url}"
        registry.register_torrent(session, study.id, registry.parse_magnet(magnet))
        study_id = study.id

    nodes = _dht_nodes(swarm)
    save_path = tmp_path / "session"
    save_path.mkdir()
    swarm_crawler = SwarmSessionCrawler(
        settings=settings,
        on_metadata=_metadata_writer(db),
        dht_nodes=nodes,
        save_path=save_path,
        poll_interval=0.5,
    )
    crawlers: list[Any] = [
        TrackerCrawler(settings=settings, refresh=1),
        DhtCrawler(settings=settings, bootstrap=nodes, lookup_interval=ROUND_SECONDS),
        swarm_crawler,
    ]
    service = CrawlService(settings, db, crawlers=crawlers, heartbeat_seconds=1)
    # What the session hands on, seen here too: the pipeline stores a peer once a
    # minute per source (coalescing), so late rounds are checked on the way in.
    session_saw: list[PeerSighting] = []
    run_session = swarm_crawler.run

    async def run_teed(torrents: Any, sink: SightingSink, stop: asyncio.Event) -> None:
        await run_session(torrents, _Tee(sink, session_saw), stop)

    swarm_crawler.run = run_teed  # type: ignore[method-assign]

    async def crawl() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        deadline = time.monotonic() + CRAWL_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            assert not task.done(), task.exception()
        stop.set()
        await task

    asyncio.run(crawl())
    get_settings.cache_clear()

    with db.engine.connect() as conn:
        with db.session() as s:
            study_row = s.get(Study, study_id)
            assert study_row is not None
            # The study owner's exact read: the public's is cell-key perturbed (issue 15).
            scope = resolve_scope(conn, study_row, exact=True)
        summary = compute_summary(conn, scope)
    # Who the crawler sighted (test memory), for a failure's message.
    found = {
        f"{c.kind}@{c.address}": c.address in {str(x.ip) for x in session_saw}
        for c in swarm.clients
    }
    own = (
        sorted(map(str, service.own._all_addresses())),
        sorted(service.own._all_ports()),
        [c.peer_port for c in swarm.clients],
    )
    context = (found, own, summary, swarm_crawler.stats)
    # The crawler saw itself (opentracker lists the requester) and dropped it.
    assert service.own.excluded > 0, context
    assert summary["unique_peers"] == len(swarm.clients), context
    seeds = sum(c.seed for c in swarm.clients)
    assert (summary["seeds"], summary["leechers"], summary["unknown_state"]) == (
        seeds,
        len(swarm.clients) - seeds,
        0,
    ), context
    assert {"tracker", "swarm"} <= set(summary["sightings_by_source"]), context

    with db.session() as s:
        torrent = s.scalars(select(Torrent)).one()
        assert torrent.metadata_state == "complete" and torrent.name == "episode.bin"
        rounds = s.scalars(
            select(Sample)
            .where(Sample.source == "swarm", Sample.known_peers.is_not(None))
            .order_by(Sample.started_at)
        ).all()
        assert len(rounds) >= CRAWL_SECONDS / ROUND_SECONDS - 4, len(rounds)
        # The last sample is the partial round the stop cut short (the crawler reports
        # what it learnt there too): seconds long, it may end before a client whose
        # connection dropped at the round's start is dialled again. Coverage is a
        # figure of whole rounds (session 6, loop run A1: 20 rounds 6/6, then 5/6).
        whole = rounds[:-1]
        late_from = whole[-LATE_ROUNDS].started_at
        last_full = [r for r in whole[-LATE_ROUNDS:] if r.known_peers]
    # Every client is sighted again in the late rounds, not only at the start.
    late = {str(x.ip) for x in session_saw if x.seen_at >= late_from and x.source == "swarm"}
    for client in swarm.clients:
        assert client.address in late, (client.kind, client.address)
    # Sustained coverage: in each of the last rounds the session holds (or makes again) a
    # connection to every client, and reports all of them sighted of all known. aria2 drops a
    # connection neither side is interested in after 30 s, and the seeds close theirs now
    # and then: the crawler dials them again the next round (issue 14).
    names = {c.address: f"{c.kind}-{'seed' if c.seed else 'leech'}" for c in swarm.clients}

    def connected(r: Sample) -> str:
        window = {
            names.get(str(x.ip), "?")
            for x in session_saw
            if x.client is not None and r.started_at <= x.seen_at < r.finished_at
        }
        seconds = (r.finished_at - r.started_at).total_seconds()
        return f"{r.peers_returned}/{r.known_peers}({seconds:.0f}s)[{','.join(sorted(window))}]"

    per_round = " ".join(connected(r) for r in rounds)
    assert last_full and all(r.known_peers == len(swarm.clients) for r in last_full), per_round
    # Every whole round once the crawl is under way, not only the last: a client whose
    # connection closed is dialled again within seconds (a fifth of a round), so no
    # round goes without it. Dialled again only after a round's length (session 7, loop
    # run A1: 5/6 in a late round), a drop early in a round left the next one without it.
    steady = whole[STEADY_FROM_ROUND:]
    assert len(steady) >= LATE_ROUNDS, per_round
    assert all(r.peers_returned == r.known_peers == len(swarm.clients) for r in steady), per_round
    # No payload: the tripwire never fired and nothing reached the session's save path.
    assert swarm_crawler.stats.payload_bytes_down == 0
    assert swarm_crawler.stats.payload_bytes_up == 0
    assert not any(p.is_file() for p in save_path.rglob("*"))
