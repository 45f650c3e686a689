"""Privacy on the demo's paths: an open (arriving) simulated swarm crawled for real over
loopback, then the time-lapse page that `swarmwatch video` and the API's video render
from; the database, the logs and the page hold none of the swarm's addresses."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from swarmwatch import registry
from swarmwatch.config import get_settings
from swarmwatch.service import CrawlService
from swarmwatch.sim import ArrivingSwarm, CompressedClock
from swarmwatch.sim.trackers import SimTracker
from swarmwatch.store import Database
from swarmwatch.timelapse import render_html, timelapse_data
from swarmwatch.tracker.crawler import TrackerCrawler
from tests.test_privacy_paths import scan
from tests.test_sim_citydb import write_city_db

IH = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b"


@pytest.mark.slow
def test_no_address_from_arrivals_to_the_video_page(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("scans the SQLite file's bytes")
    caplog.set_level(logging.DEBUG)
    city = write_city_db(tmp_path / "city.mmdb")
    monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(city))
    get_settings.cache_clear()
    settings = get_settings()
    db = Database(db_url)
    db.upgrade()
    clock = CompressedClock(start=datetime(2026, 3, 1, tzinfo=UTC), factor=3600)
    swarm = ArrivingSwarm(
        seed=9, arrivals_per_day=4000, torrents=[IH], clock=clock, city_db=city, cache_dir=tmp_path
    )

    async def crawl() -> None:
        tracker = await SimTracker(swarm, interval=600, min_interval=60, host6=None).start()
        with db.session() as session:
            study = registry.create_study(session, "arrivals", k_threshold=1)
            parsed = registry.parse_magnet(f"magnet:?xt=urn:btih:{IH}&tr={tracker.http_url}")
            registry.register_torrent(session, study.id, parsed)
        crawler = TrackerCrawler(settings=settings, clock=clock, min_interval_floor=60)
        service = CrawlService(settings, db, crawlers=[crawler], heartbeat_seconds=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        for _ in range(300):  # a few simulated hours of arrivals, bounded
            await asyncio.sleep(0.1)
            if service.pipeline is not None and service.pipeline.stats.new_peers >= 300:
                break
        stop.set()
        await task
        assert service.pipeline is not None and service.pipeline.stats.new_peers >= 300
        await tracker.aclose()

    asyncio.run(crawl())
    # Everyone who arrived up to now, whether or not the crawl met them.
    ips = [p.ip for b in range(swarm.bucket_of(clock.now()) + 1) for p in swarm.arrivals(b)]
    assert len(ips) >= 100

    blobs: dict[str, bytes] = {}
    data = timelapse_data(db, 1, interval=3600, res=4)
    assert data["frames"], "nothing to draw"
    blobs["video page"] = render_html({**data, "video": {"heading": "arrivals"}}).encode()
    db.dispose()
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = Path(db_url.removeprefix("sqlite:///") + suffix)
        if f.exists():
            blobs[f"database {f.name}"] = f.read_bytes()
    blobs["log"] = caplog.text.encode()
    assert len(blobs["log"]) > 1000, "DEBUG logging was not captured"
    assert scan(blobs, ips) == []
