"""GeoNames places and metro areas: known urban areas come out right; loading is idempotent."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from sqlalchemy import func, select

from swarmwatch.pipeline.places import (
    MAX_RADIUS_KM,
    PlaceRow,
    Places,
    build_metros,
    build_places,
    core_radius_km,
    distance_km,
    load_places,
)
from swarmwatch.store import Database
from swarmwatch.store.models import City, Metro


@pytest.fixture(scope="module")
def places() -> Places:
    return build_places()


def _city(places: Places, name: str, country: str) -> PlaceRow:
    return max(
        (c for c in places.cities if c.name == name and c.country == country),
        key=lambda c: c.population,
    )


def _metro_of(places: Places, name: str, country: str) -> int:
    return places.metro_of[_city(places, name, country).geoname_id]


def test_dallas_takes_fort_worth_and_arlington(places: Places) -> None:
    dallas = _metro_of(places, "Dallas", "US")
    assert dallas == _city(places, "Dallas", "US").geoname_id
    assert _metro_of(places, "Fort Worth", "US") == dallas
    assert _metro_of(places, "Arlington", "US") == dallas
    assert _metro_of(places, "Plano", "US") == dallas
    assert _metro_of(places, "Houston", "US") != dallas


def test_brisbane_takes_logan_not_gold_coast(places: Places) -> None:
    brisbane = _metro_of(places, "Brisbane", "AU")
    assert _metro_of(places, "Logan City", "AU") == brisbane
    assert _metro_of(places, "Gold Coast", "AU") != brisbane
    assert _metro_of(places, "Sydney", "AU") != brisbane


def test_seoul_takes_incheon_and_suwon(places: Places) -> None:
    seoul = _metro_of(places, "Seoul", "KR")
    assert _metro_of(places, "Incheon", "KR") == seoul
    assert _metro_of(places, "Suwon", "KR") == seoul
    assert _metro_of(places, "Busan", "KR") != seoul


REFERENCE = Path(__file__).parent / "data" / "urban_areas_demographia_2020.csv"


def _reference() -> list[dict[str, str]]:
    with REFERENCE.open(encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def _ratios(places: Places) -> dict[str, float]:
    metros = {m["id"]: m for m in places.metros}
    return {
        row["name"]: metros[places.metro_of[int(row["geoname_id"])]]["population"]
        / int(row["population"])
        for row in _reference()
    }


def test_reference_table_is_broad() -> None:
    rows = _reference()
    assert len(rows) >= 50
    assert len({r["country"] for r in rows}) >= 40
    named = {r["name"] for r in rows}
    assert {"Perth", "Brisbane", "Shanghai", "Amsterdam", "Manila", "Seoul", "Dallas"} <= named


def test_metros_meet_issue_16_bounds(places: Places, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16: >= 90 % of the reference areas within 0.67-1.5x, none outside 0.4-2.5x.

    Against overfitting: no rule or constant names a city of this table, and the table
    is split into its even and odd rows, each of which must meet the 90 % on its own.
    The SimpleMaps estimates (places.URBAN_POPULATIONS) are another publisher's figures,
    matched to each metro's core by name within 15 km (3 km without the name): the first
    distances tried, not tuned; they only ever raise a metro. Before them the GeoNames
    builder alone had 85/109 (43 and 42 per half), the one before issue 16 62/108.
    """
    ratios = _ratios(places)
    logs = sorted(abs(math.log(r)) for r in ratios.values())
    within = [n for n, r in ratios.items() if 0.67 <= r <= 1.5]
    wild = {n: round(r, 2) for n, r in ratios.items() if not 0.4 <= r <= 2.5}
    halves = [list(ratios.values())[h::2] for h in (0, 1)]
    in_halves = [sum(0.67 <= r <= 1.5 for r in half) for half in halves]
    with capsys.disabled():
        print(
            f"\nmetros vs Demographia 2020: {len(within)}/{len(ratios)} within 0.67-1.5x "
            f"(even rows {in_halves[0]}/{len(halves[0])}, odd {in_halves[1]}/{len(halves[1])}), "
            f"median |log ratio| {logs[len(logs) // 2]:.3f}, outside 0.4-2.5x: {wild}"
        )
    assert len(within) >= 0.9 * len(ratios)
    for n, half in zip(in_halves, halves, strict=True):
        assert n >= 0.9 * len(half)
    assert not wild


def test_geonames_alone_keeps_its_floor(places: Places) -> None:
    """Without the SimpleMaps estimates the builder is where it was (85/109 within
    0.67-1.5x, 2 outside 0.4-2.5x: the one before issue 16 had 62 and 6), and short of
    issue 16's bounds for want of listed suburbs (Jakarta 15.6 M, Atlanta 1.7 M)."""
    metro_of, metros = build_metros(places.cities, urban_estimates=False)
    population = {m["id"]: m["population"] for m in metros}
    ratios = {
        row["name"]: population[metro_of[int(row["geoname_id"])]] / int(row["population"])
        for row in _reference()
    }
    assert sum(0.67 <= r <= 1.5 for r in ratios.values()) >= 85
    assert sum(not 0.4 <= r <= 2.5 for r in ratios.values()) <= 2
    assert ratios["Jakarta"] < 0.5 and ratios["Atlanta"] < 0.4


def test_urban_estimates_fill_in_missing_suburbs(places: Places) -> None:
    """GeoNames lists too few of Jakarta's and Atlanta's suburbs; SimpleMaps' urban-area
    figure raises them. A figure for the city proper never lowers a metro."""
    metros = {m["id"]: m for m in places.metros}
    assert metros[_metro_of(places, "Jakarta", "ID")]["population"] > 30e6  # listed: 15.6 M
    assert metros[_metro_of(places, "Atlanta", "US")]["population"] > 4e6  # listed: 1.7 M
    assert metros[_metro_of(places, "Atlanta", "US")]["name"] == "Atlanta"
    milan = metros[_metro_of(places, "Milan", "IT")]  # SimpleMaps: the city proper, 1.4 M
    assert milan["population"] > 3e6


def test_agglomeration_cores_are_not_double_counted(places: Places) -> None:
    """GeoNames' Perth and Brisbane are their statistical areas, Shanghai its province-level
    municipality, whose districts (Songjiang, 31 km out) GeoNames lists as places too."""
    metros = {m["id"]: m for m in places.metros}
    for name, country, low, high in (
        ("Perth", "AU", 1.9e6, 2.5e6),  # GeoNames 2.38 M; UN WUP 2018 2.04 M
        ("Brisbane", "AU", 2.1e6, 3.0e6),  # GeoNames 2.78 M; UN WUP 2018 2.36 M
        ("Shanghai", "CN", 20e6, 26e6),  # GeoNames 24.9 M; UN WUP 2018 25.6 M
    ):
        assert low < metros[_metro_of(places, name, country)]["population"] < high, name


def test_separate_cities_stay_separate(places: Places) -> None:
    amsterdam = _metro_of(places, "Amsterdam", "NL")
    for town in ("Utrecht", "Almere Stad", "Haarlem", "Amersfoort"):
        assert _metro_of(places, town, "NL") != amsterdam, town
    # Cities GeoNames gives as whole municipalities of 5 M or more are not glued together
    # by the towns between them (Demographia: Shenzhen 15.9 M, Guangzhou-Foshan apart).
    shenzhen = _metro_of(places, "Shenzhen", "CN")
    assert _metro_of(places, "Guangzhou", "CN") != shenzhen
    assert _metro_of(places, "Dongguan", "CN") != shenzhen
    metros = {m["id"]: m for m in places.metros}
    assert metros[amsterdam]["population"] < 1.7e6  # Demographia: 1.14 M


def test_named_districts_add_no_people(places: Places) -> None:
    """ "Zürich (Kreis 3)" and "Budapest XI. kerület" are parts of their city, whose figure
    counts them already; "Miami Gardens" is a city of its own."""
    metros = {m["id"]: m for m in places.metros}
    zurich = metros[_metro_of(places, "Zürich", "CH")]
    assert zurich["population"] < 1.25e6  # Demographia 0.82 M; with its Kreise 1.33 M
    assert _metro_of(places, "Zürich (Kreis 3)", "CH") == zurich["id"]
    budapest = metros[_metro_of(places, "Budapest", "HU")]
    assert budapest["population"] < 3.3e6  # Demographia 2.40 M; with its kerületek 3.68 M
    miami = metros[_metro_of(places, "Miami", "US")]
    gardens = _city(places, "Miami Gardens", "US")
    assert places.metro_of[gardens.geoname_id] == miami["id"]
    assert miami["population"] > 3.8e6  # Miami Gardens and Miami Beach count


def test_metros_are_named_after_their_core(places: Places) -> None:
    manila = _metro_of(places, "Manila", "PH")
    assert _metro_of(places, "Quezon City", "PH") == manila
    metros = {m["id"]: m for m in places.metros}
    assert metros[manila]["name"] == "Manila"
    assert manila == _city(places, "Manila", "PH").geoname_id
    assert metros[_metro_of(places, "Fort Worth", "US")]["name"] == "Dallas"
    assert metros[_metro_of(places, "Incheon", "KR")]["name"] == "Seoul"


def test_metro_populations_are_urban_areas(places: Places) -> None:
    metros = {m["id"]: m for m in places.metros}
    dallas = metros[_metro_of(places, "Dallas", "US")]
    # Demographia puts Dallas-Fort Worth at ~6-7 M, Seoul-Incheon at ~20-25 M.
    assert 4_000_000 < dallas["population"] < 9_000_000
    seoul = metros[_metro_of(places, "Seoul", "KR")]
    assert 15_000_000 < seoul["population"] < 30_000_000
    # Boroughs are places of their own in GeoNames; they must not double New York.
    nyc = metros[_metro_of(places, "New York City", "US")]
    assert nyc["population"] < 25_000_000
    # Sections never empty a metro: a metro counts 0 only if GeoNames gives its towns none.
    empty = {m["id"] for m in places.metros if m["population"] == 0}
    assert all(c.population == 0 for c in places.cities if places.metro_of[c.geoname_id] in empty)


def test_every_city_has_a_metro_and_coverage(places: Places) -> None:
    assert len(places.cities) > 150_000  # cities500
    assert set(places.metro_of) == {c.geoname_id for c in places.cities}
    assert set(places.metro_of.values()) == {m["id"] for m in places.metros}
    assert places.metro_of[2643743] == 2643743  # London is a core


def test_radius_and_distance() -> None:
    assert core_radius_km(100_000) == pytest.approx(15.8, abs=0.1)
    assert core_radius_km(100_000, "US") == pytest.approx(15.8, abs=0.1)
    assert core_radius_km(100_000, "NL") < core_radius_km(100_000, "US")
    assert core_radius_km(50_000_000) == MAX_RADIUS_KM
    assert distance_km(32.78306, -96.80667, 32.72541, -97.32085) == pytest.approx(48.4, abs=1)


def test_cores_merge_only_within_country() -> None:
    def row(gid: int, country: str, lat: float, lon: float, pop: int) -> PlaceRow:
        return PlaceRow(gid, f"c{gid}", country, None, lat, lon, pop, None)

    # Two big cities 10 km apart across a border stay two metros.
    metro_of, metros = build_metros(
        [row(1, "AA", 0.0, 0.0, 900_000), row(2, "BB", 0.0, 0.09, 800_000)]
    )
    assert metro_of == {1: 1, 2: 2} and len(metros) == 2


def test_load_places_is_idempotent(db: Database) -> None:
    first = load_places(db)
    assert first.loaded and first.cities > 150_000
    again = load_places(db)
    assert not again.loaded and again.cities == first.cities
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(City)) == first.cities
        assert session.scalar(select(func.count()).select_from(Metro)) == first.metros
        london = session.get(City, 2643743)
        assert london is not None and london.timezone == "Europe/London"
        assert london.metro_id == 2643743
