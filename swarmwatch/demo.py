"""`swarmwatch demo`: a simulated swarm on loopback, crawled for real, on a live map.

Starts the simulated population with its HTTP/UDP trackers and DHT nodes,
registers the torrents through the REST API as a researcher would, runs the real
crawlers and pipeline under a compressed clock, and serves the API and the map.
The swarm's public addresses are data only: nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from swarmwatch.api import create_app
from swarmwatch.auth import create_api_key
from swarmwatch.config import Settings
from swarmwatch.geoip import city_db_path, is_embedded
from swarmwatch.pipeline.places import load_places
from swarmwatch.service import CrawlService
from swarmwatch.store import Database

log = logging.getLogger(__name__)

#: A simulated day per wall minute: 24 hourly frames in a minute, alpha60's five days in five.
DEFAULT_SPEED = 1440.0
#: Arrivals per simulated day: big enough to fill a world map, small enough for two cores.
DEFAULT_PEERS = 20_000
#: How long a simulated peer stays, on average and at most (simulated seconds): a few
#: hours like a download, so the map follows the evening round the globe.
MEAN_STAY = 4 * 3600.0
MAX_STAY = 24 * 3600.0
#: Releases of the one simulated episode (alpha60 tracked 72 of one episode).
DEFAULT_TORRENTS = 6
#: The simulated trackers' min interval (simulated seconds): 15 min keeps the crawl at a
#: few announces per wall second while every peer is still seen every hourly frame.
SIM_MIN_INTERVAL = 900
SIM_DHT_NODES = 40
#: The simulated DHT re-reads who is online this often (simulated seconds).
DHT_REFRESH_SIM_SECONDS = 1800.0
#: The demo study's description starts with this; the map then says the data is simulated.
SIMULATED_TAG = "[simulated]"


@dataclass
class DemoInfo:
    url: str
    study_id: int
    torrents: list[str]
    geoip: Path
    started_at: datetime
    #: An API key that lives in the demo's database, for the README's examples.
    api_key: str = ""
    database: str = ""


def demo_infohashes(n: int, seed: int = 1) -> list[str]:
    return [hashlib.sha1(f"swarmwatch-demo-{seed}-{i}".encode()).hexdigest() for i in range(n)]


async def run_demo(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    peers: int = DEFAULT_PEERS,
    torrents: int = DEFAULT_TORRENTS,
    speed: float = DEFAULT_SPEED,
    seed: int = 1,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[DemoInfo], None] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> None:
    """Run the demo until stop is set (Ctrl-C in the CLI)."""
    from swarmwatch.dht.crawler import DhtCrawler
    from swarmwatch.sim import ArrivingSwarm, CompressedClock
    from swarmwatch.sim.dht import SimulatedDht
    from swarmwatch.sim.trackers import SimTracker
    from swarmwatch.tracker.crawler import TrackerCrawler

    if not settings.loopback_only:
        raise ValueError("the demo runs only with loopback_only on")
    stop = stop or asyncio.Event()
    db = Database(settings.database_url)
    db.upgrade()
    progress("loading GeoNames cities and metro areas")
    await asyncio.to_thread(load_places, db)

    # Simulated time starts at the last midnight UTC, so frames line up with days.
    now = datetime.now(UTC)
    clock = CompressedClock(
        start=now.replace(hour=0, minute=0, second=0, microsecond=0), factor=speed
    )
    hashes = demo_infohashes(torrents, seed)
    progress(f"simulating {peers:,} arrivals a day (the first run indexes the GeoIP db)")
    swarm = await asyncio.to_thread(
        ArrivingSwarm,
        seed=seed,
        arrivals_per_day=peers,
        torrents=hashes,
        clock=clock,
        mean_stay=MEAN_STAY,
        max_stay=MAX_STAY,
    )
    tracker = await SimTracker(
        swarm, interval=1800, min_interval=SIM_MIN_INTERVAL, seed=seed
    ).start()
    dht = SimulatedDht(
        SIM_DHT_NODES,
        infohashes=hashes,
        peers=lambda ih: swarm.active_peers(ih),
        seed=seed,
        first_host=20,
    )
    await dht.start()

    app = create_app(settings, db)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="demo-api")
    while not server.started:
        if serve_task.done():
            await serve_task
            raise RuntimeError("the API server did not start")
        await asyncio.sleep(0.05)
    url = f"http://{host}:{sock.getsockname()[1]}"

    # Register like a researcher: a key, a study, its torrents, over the REST API.
    with db.session() as session:
        key = create_api_key(session, "demo")
    study_id = await _register(url, key, hashes, [tracker.http_url, tracker.udp_url])

    demo_settings = settings.model_copy(update={"vantage": "demo"})
    crawlers: list[Any] = [
        TrackerCrawler(settings=demo_settings, clock=clock, min_interval_floor=SIM_MIN_INTERVAL),
        DhtCrawler(
            settings=demo_settings, bootstrap=dht.bootstrap, now=clock.now, lookup_interval=5.0
        ),
    ]
    service = CrawlService(
        demo_settings, db, crawlers=crawlers, metrics=app.state.metrics, heartbeat_seconds=2.0
    )
    app.state.crawl_status = service.status
    crawl_stop = asyncio.Event()
    crawl_task = asyncio.create_task(service.run(crawl_stop), name="demo-crawl")
    refresh_task = asyncio.create_task(_refresh_dht(dht, clock, stop), name="demo-dht-refresh")

    geoip = city_db_path(settings)
    if on_ready is not None:
        on_ready(DemoInfo(url, study_id, hashes, geoip, clock.start, key, settings.database_url))
    try:
        await stop.wait()
    finally:
        progress("stopping: flushing the pipeline")
        crawl_stop.set()
        await asyncio.gather(crawl_task, return_exceptions=True)
        refresh_task.cancel()
        await asyncio.gather(refresh_task, return_exceptions=True)
        server.should_exit = True
        await asyncio.gather(serve_task, return_exceptions=True)
        dht.close()
        await tracker.aclose()
        db.dispose()


async def _register(url: str, key: str, hashes: list[str], trackers: list[str]) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        r = await client.post(
            "/api/v1/studies",
            json={
                "name": f"demo {datetime.now(UTC):%Y-%m-%d %H:%M:%S}",
                "description": f"{SIMULATED_TAG} Simulated swarm on loopback (swarmwatch demo): "
                "synthetic peers, not real people.",
                "titles": ["Simulated episode"],
            },
        )
        r.raise_for_status()
        study_id = int(r.json()["id"])
        for i, ih in enumerate(hashes):
            tr = "&".join(f"tr={t}" for t in trackers)
            magnet = f"magnet:?xt=urn:btih:{ih}&dn=simulated.episode.release.{i + 1}&{tr}"
            r = await client.post("/api/v1/torrents", json={"study_id": study_id, "magnet": magnet})
            r.raise_for_status()
    return study_id


async def _refresh_dht(dht: Any, clock: Any, stop: asyncio.Event) -> None:
    """The simulated DHT holds who is online now: re-read it every simulated half hour."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DHT_REFRESH_SIM_SECONDS / clock.factor)
        dht.populate()


def banner(info: DemoInfo, *, peers: int, speed: float) -> str:
    stale = " (embedded 2018 GeoLite2 City: stale)" if is_embedded(info.geoip) else ""
    day = timedelta(days=1).total_seconds() / speed
    n = len(info.torrents)
    return "\n".join(
        [
            "swarmwatch demo: the swarm is SIMULATED (synthetic peers on loopback, not people)",
            f"  map and API:  {info.url}/   (API docs: {info.url}/docs)",
            f"  study:        {info.study_id}, {n} torrents, {peers:,} simulated arrivals a day",
            f"  clock:        {speed:g}x (a simulated day every {day:.0f} s), "
            f"from {info.started_at:%Y-%m-%d %H:%M} UTC",
            f"  GeoIP:        {info.geoip}{stale}",
            f"  rankings CSV: {info.url}/api/v1/studies/{info.study_id}/rankings.csv",
            f"  API key:      {info.api_key}   (for the README's examples: KEY={info.api_key})",
            f"  database:     {info.database} (replaced on each run, key included)",
            "Press Ctrl-C to stop.",
        ]
    )


__all__ = ["SIMULATED_TAG", "DemoInfo", "banner", "demo_infohashes", "run_demo"]
