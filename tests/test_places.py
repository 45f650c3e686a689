"""GeoNames places and metro areas: known urban areas come out right; loading is idempotent."""

from __future__ import annotations

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
