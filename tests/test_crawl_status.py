"""Seed state as a reader expects it, and a torrent's crawl status (issue 14).

A peer is a seed if any sighting with known state says so, whichever came first;
peers whose state no sighting showed are unknown, not leechers. The torrent's status
shows the same numbers as the summary, anomalies included, and the last swarm
round's coverage; /metrics shows coverage and own-endpoint drops.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from swarmwatch.metrics import ServiceMetrics
from swarmwatch.pipeline.geolocate import Geolocator
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.sightings import PeerSighting, SampleRecord, Source
from swarmwatch.store import Database
from tests.pipeline_fixtures import T0, addr, write_city_db

IH = "5e" * 20


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


def _sighting(ip: str, source: Source, seed: bool | None, minutes: int) -> PeerSighting:
    return PeerSighting(IH, addr(ip), 6881, source, "v1", T0 + timedelta(minutes=minutes), seed)


def test_seed_state_over_all_sightings_in_summary_and_status(
    db: Database, city_db: Path, client: Any
) -> None:
    r = client.post("/api/v1/studies", json={"name": "seeds", "k_threshold": 1})
    assert r.status_code == 201, r.text
    study = r.json()["id"]
    r = client.post("/api/v1/torrents", json={"study_id": study, "infohash": IH})
    assert r.status_code == 201, r.text
    items = [
        # The tracker sights first, with no state; the session later sees a seed.
        _sighting("81.2.69.160", Source.TRACKER, None, 0),
        _sighting("81.2.69.160", Source.SWARM, True, 2),
        # Seen leeching, then seeding (it finished): a seed.
        _sighting("216.160.83.56", Source.SWARM, False, 0),
        _sighting("216.160.83.56", Source.SWARM, True, 3),
        # Leeching only.
        _sighting("89.160.20.112", Source.SWARM, False, 1),
        # Never seen with a state: unknown, not a leecher (and an anomaly: no city).
        _sighting("8.8.8.8", Source.TRACKER, None, 0),
        _sighting("8.8.8.8", Source.DHT, None, 5),
    ]
    round_ = SampleRecord(
        IH, Source.SWARM, "v1", T0, T0, peers_returned=3, seeders=2, leechers=1, known_peers=4
    )

    async def ingest() -> None:
        geo = Geolocator(city_db)
        try:
            async with Pipeline(db, geolocator=geo, batch_size=2) as p:
                for s in items:
                    await p.put(s)
                await p.put_sample(round_)
        finally:
            geo.close()

    asyncio.run(ingest())

    summary = client.get(f"/api/v1/studies/{study}/summary").json()
    assert summary["unique_peers"] == 4
    assert (summary["seeds"], summary["leechers"], summary["unknown_state"]) == (2, 1, 1)
    assert "any sighting with known state" in summary["method"]["seeds"]

    status = client.get(f"/api/v1/torrents/{IH}").json()["status"]
    assert status["unique_peers"] == 4
    assert status["anomalies"] == summary["anomalies"] == 1
    assert (status["seeds"], status["leechers"], status["unknown_state"]) == (2, 1, 1)
    assert (status["round_sighted"], status["round_reachable"]) == (3, 4)
    assert status["coverage"] == 0.75


def test_status_of_a_torrent_with_no_peers_yet_reports_zeros(client: Any) -> None:
    r = client.post("/api/v1/studies", json={"name": "empty", "k_threshold": 1})
    study = r.json()["id"]
    client.post("/api/v1/torrents", json={"study_id": study, "infohash": IH})
    status = client.get(f"/api/v1/torrents/{IH}").json()["status"]
    assert status["anomalies"] == 0 and status["seeds"] == 0 and status["unknown_state"] == 0
    assert status["coverage"] is None  # no swarm round yet


def test_metrics_show_coverage_and_own_endpoint_drops() -> None:
    metrics = ServiceMetrics()
    metrics.watch_coverage(lambda: (3, 4))
    metrics.watch_own_excluded(lambda: 7.0)
    text = metrics.exposition().decode()
    assert "swarmwatch_swarm_round_coverage 0.75" in text
    assert "swarmwatch_swarm_round_peers_reachable 4.0" in text
    assert "swarmwatch_own_endpoint_sightings 7.0" in text
