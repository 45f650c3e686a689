"""One study, three ways of finding peers, all real: opentracker, a libtorrent DHT, the swarm.

Real libtorrent clients (a seeder and two leechers on their own 127.0.0.x
addresses) announce to a real opentracker and to a loopback Mainline DHT of
their own. A torrent registered by magnet only is crawled by the crawl service
with all three crawlers; the study ends up with sightings from the tracker, the
DHT and the swarm session (direct or PEX), the metadata arrives over BEP 9, and
the seeder is recorded as a seed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from sqlalchemy import select

from swarmwatch import registry
from swarmwatch.config import get_settings
from swarmwatch.dht.crawler import DhtCrawler
from swarmwatch.ltsession.crawler import SwarmSessionCrawler
from swarmwatch.service import CrawlService, _metadata_writer
from swarmwatch.store import Database
from swarmwatch.store.models import Peer, Torrent
from swarmwatch.store.writer import sources_of
from swarmwatch.tracker.crawler import TrackerCrawler
from tests.pipeline_fixtures import write_city_db
from tests.test_ltsession import _free_port, _peer_session, _wait_listening
from tests.torrent_files import make_torrent

MEMBERS = ("127.0.0.42", "127.0.0.43", "127.0.0.44")  # seeder, leecher, leecher
DEADLINE = 120.0


@pytest.mark.slow
def test_sightings_from_tracker_dht_and_swarm(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not shutil.which("opentracker"):
        pytest.fail("the Debian package opentracker is needed (scripts/test.sh installs it)")
    root = tmp_path / "swarm"
    root.mkdir()
    root.chmod(0o755)  # opentracker drops to user nobody and chroots here
    src = root / "seed"
    port = _free_port()
    tracker_url = f"http://127.0.0.1:{port}/announce"
    ti = lt.torrent_info(make_torrent(src, "payload.bin", 4 * 1024 * 1024, trackers=(tracker_url,)))
    infohash = str(ti.info_hashes().v1)
    (root / "whitelist").write_text(infohash + "\n")
    (root / "whitelist").chmod(0o644)
    cmd = ["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
    cmd += ["-w", "/whitelist", "-d", str(root)]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    tracker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sessions: list[Any] = []
    try:
        _wait_listening(port, tracker)
        sessions = [_peer_session(ip, dht=True) for ip in MEMBERS]
        nodes = [(ip, int(s.listen_port())) for ip, s in zip(MEMBERS, sessions, strict=True)]
        for s in sessions:
            for node in nodes:
                s.add_dht_node(node)
        for i, s in enumerate(sessions):
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(ti)
            if i == 0:
                atp.save_path, atp.flags = str(src), lt.torrent_flags.seed_mode
            else:
                atp.save_path = str(root / f"leecher{i}")
            handle = s.add_torrent(atp)
            if i == 0:
                handle.set_upload_limit(16 * 1024)  # the leechers must not finish

        monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(write_city_db(tmp_path / "city.mmdb")))
        monkeypatch.setenv("SWARMWATCH_VANTAGE", "three")
        get_settings.cache_clear()
        settings = get_settings()
        with db.session() as session:
            study = registry.create_study(session, "three sources")
            parsed = registry.parse_magnet(f"magnet:?xt=urn:btih:{infohash}&tr={tracker_url}")
            registry.register_torrent(session, study.id, parsed)
        crawlers: list[Any] = [
            TrackerCrawler(settings=settings, min_interval_floor=1, refresh=1),
            DhtCrawler(settings=settings, bootstrap=nodes, lookup_interval=2),
            SwarmSessionCrawler(
                settings=settings,
                on_metadata=_metadata_writer(db),
                listen_interfaces="127.0.0.1:0",
                dht_nodes=nodes,
                resight_interval=2,
                poll_interval=0.2,
            ),
        ]
        result = asyncio.run(_crawl(db, settings, crawlers))
    finally:
        tracker.terminate()
        tracker.wait(timeout=10)
        del sessions

    sources, seeds, state, name = result
    assert {"tracker", "dht"} <= sources, sources
    assert sources & {"swarm", "pex"}, sources
    assert state == "complete" and name == "payload.bin"
    assert seeds, "the seeder was never recorded as a seed"


async def _crawl(
    db: Database, settings: Any, crawlers: list[Any]
) -> tuple[set[str], list[bool], str, str | None]:
    service = CrawlService(settings, db, crawlers=crawlers, heartbeat_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))

    def observed() -> tuple[set[str], list[bool], str, str | None]:
        with db.session() as s:
            sources = set().union(*map(sources_of, s.scalars(select(Peer.sources).distinct())))
            seeds = list(s.scalars(select(Peer.seed).where(Peer.seed.is_(True)).limit(1)))
            t = s.scalars(select(Torrent)).one()
            return sources, seeds, t.metadata_state, t.name

    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            await asyncio.sleep(0.5)
            assert not task.done(), task.exception()
            seen = await asyncio.to_thread(observed)
            sources, seeds, state, _name = seen
            done = {"tracker", "dht"} <= sources and sources & {"swarm", "pex"}
            if done and seeds and state == "complete":
                break
            assert time.monotonic() < deadline, f"gave up: {seen}, {service.status()}"
    finally:
        stop.set()
        await task
    return await asyncio.to_thread(observed)
