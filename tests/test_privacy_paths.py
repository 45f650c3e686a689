"""Privacy across every path: real tracker crawl → pipeline → store → API → exports.

A simulated swarm is crawled for real over loopback by the tracker crawler inside
the crawl service, at DEBUG logging; then every API answer and export file, the
database file (with its WAL) and the logs are scanned for every address in the
swarm, as text and packed bytes. Zero hits, beyond what chance puts in binary data
(see scan).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from swarmwatch import registry
from swarmwatch.analysis.export import export_study
from swarmwatch.api import create_app
from swarmwatch.auth import create_api_key
from swarmwatch.config import get_settings
from swarmwatch.service import CrawlService
from swarmwatch.sim import CompressedClock, SimulatedSwarm
from swarmwatch.sim.trackers import SimTracker
from swarmwatch.store import Database
from swarmwatch.tracker.crawler import TrackerCrawler
from tests.conftest import LiveServer
from tests.test_sim_citydb import write_city_db

IH = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"


def address_forms(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[bytes]:
    """The forms an address could be written in, but IPv4's 4 packed bytes (see scan)."""
    out = [str(ip).encode(), ip.exploded.encode()]
    if ip.version == 4:
        out.append(ipaddress.IPv6Address(f"::ffff:{ip}").packed)
        out.append(f"::ffff:{ip}".encode())
    else:
        out.append(ip.packed)
    return out


#: How unlikely a count of packed-IPv4 hits must be under chance alone to be called a leak.
CHANCE = 1e-6


def chance_limit(expected: float) -> int:
    """The most hits chance explains: the smallest k with P(Poisson(expected) > k) < CHANCE."""
    k, term = 0, math.exp(-expected)
    cdf = term
    while 1 - cdf >= CHANCE:
        k += 1
        term *= expected / k
        cdf += term
    return k


def scan(
    blobs: dict[str, bytes], ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> list[str]:
    """Where the addresses show up: never printed, only their version and the blob.

    Text forms and 16-byte forms are hits wherever they appear. An IPv4 address's 4
    packed bytes also turn up by chance in binary data (peer keys, hashes, B-tree
    pages): with n addresses in b bytes about n * b / 2**32 times, 5 % of runs for 450
    addresses in a 480 KB database (seen in issue 13's repeated runs). A path that
    writes addresses writes every one it handles, so packed-only hits count as a leak
    once there are more than chance explains (chance_limit).
    """
    hits = []
    for where, blob in blobs.items():
        packed = 0
        for ip in ips:
            if any(form in blob for form in address_forms(ip)):
                hits.append(f"{ip.version}:{where}")  # never print the address itself
            elif ip.version == 4 and ip.packed in blob:
                packed += 1
        v4 = sum(ip.version == 4 for ip in ips)
        if packed > chance_limit(v4 * max(len(blob) - 3, 0) / 2**32):
            hits.append(f"4:{where}:packed x{packed}")
    return hits


def test_scanner_finds_what_it_looks_for() -> None:
    ip = ipaddress.ip_address("81.2.69.77")
    assert scan({"x": b"...81.2.69.77..."}, [ip]) == ["4:x"]
    assert scan({"x": b"\x00" + ip.packed}, [ip]) == ["4:x:packed x1"]
    assert scan({"x": b"81.2.69.78"}, [ip]) == []
    # 450 addresses in 480 KB: chance explains up to 3 packed hits, not a path that
    # wrote every address (or even 1 in 100 of them).
    many = [ipaddress.IPv4Address(0x51000000 + 7919 * i) for i in range(450)]
    noise = bytes(480_000)
    assert chance_limit(450 * len(noise) / 2**32) == 3
    assert scan({"db": noise + many[0].packed}, many) == []
    leaked = b"".join(ip.packed for ip in many[:5])
    assert scan({"db": noise + leaked}, many) == ["4:db:packed x5"]
    assert scan({"db": noise + many[0].packed + str(many[1]).encode()}, many) == ["4:db"]


@pytest.mark.slow
def test_no_address_on_any_path(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("scans the SQLite file's bytes")
    caplog.set_level(logging.DEBUG)
    city = write_city_db(tmp_path / "city.mmdb")
    monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(city))
    monkeypatch.setenv("SWARMWATCH_VANTAGE", "privacy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the range table's
    get_settings.cache_clear()
    settings = get_settings()
    db = Database(db_url)
    db.upgrade()

    clock = CompressedClock(start=datetime(2026, 3, 1, tzinfo=UTC), factor=3600)
    swarm = SimulatedSwarm(
        seed=5, n_peers=400, torrents=[IH], clock=clock, city_db=city, cache_dir=tmp_path
    )
    ips = [p.ip for p in swarm.peers]

    async def crawl() -> None:
        tracker = SimTracker(swarm, interval=600, min_interval=60, host6=None)
        await tracker.start()
        with db.session() as session:
            study = registry.create_study(session, "privacy", k_threshold=1)
            parsed = registry.parse_magnet(f"magnet:?xt=urn:btih:{IH}&tr={tracker.http_url}")
            extra = registry.parse_tracker_list([tracker.udp_url])
            registry.register_torrent(session, study.id, parsed, extra_trackers=extra)
        crawler = TrackerCrawler(settings=settings, clock=clock, min_interval_floor=60)
        service = CrawlService(settings, db, crawlers=[crawler], heartbeat_seconds=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        # Until most of the swarm has been seen, with a deadline for a loaded machine
        # (200 rounds of 0.1 s assumed an idle one).
        deadline = asyncio.get_running_loop().time() + 180
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            if service.pipeline is not None and service.pipeline.stats.new_peers >= 200:
                break
        stop.set()
        await task
        assert service.pipeline is not None and service.pipeline.stats.stored > 200
        await tracker.aclose()

    asyncio.run(crawl())

    blobs: dict[str, bytes] = {}
    with db.session() as session:  # /metrics is for admin keys (every study's figures)
        admin = {"Authorization": f"Bearer {create_api_key(session, 'ops', admin=True)}"}
    app = create_app(settings, db)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        paths = [
            "/api/v1/studies/1",
            "/api/v1/studies/1/summary",
            "/api/v1/studies/1/frames?interval=3600&res=4",
            "/api/v1/studies/1/cells.geojson",
            "/api/v1/studies/1/cities.geojson",
            f"/api/v1/torrents/{IH}",
            "/metrics",
        ]
        for level in ("city", "metro", "country", "cell"):
            paths += [
                f"/api/v1/studies/1/rankings?level={level}",
                f"/api/v1/studies/1/rankings.csv?level={level}",
            ]
        for path in paths:
            r = client.get(path, headers=admin if path == "/metrics" else None)
            assert r.status_code == 200, (path, r.text[:300])
            blobs[f"api {path}"] = r.content
        assert b'"unique_peers"' in blobs["api /api/v1/studies/1/summary"]
    for f in export_study(db, 1, tmp_path / "export"):
        blobs[f"export {f.name}"] = f.read_bytes()
    db.dispose()
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = Path(db_url.removeprefix("sqlite:///") + suffix)
        if f.exists():
            blobs[f"database {f.name}"] = f.read_bytes()
    for f in (tmp_path / "cache").rglob("*"):  # the geolocation range table
        if f.is_file():
            blobs[f"cache {f.name}"] = f.read_bytes()
    assert any(where.startswith("cache ") for where in blobs)
    blobs["log"] = caplog.text.encode()
    assert len(blobs["log"]) > 1000, "DEBUG logging was not captured"
    assert scan(blobs, ips) == []
