"""A user's urban-area table (Demographia, GHSL, a statistics office) in place of the metros
built from GeoNames: `swarmwatch places load FILE.csv`.

The CSV has a header row and one row per GeoNames city of an area:

    geoname_id,area_id,name,population,land_area_km2,population_source,population_year
    2063523,1,Perth,1978000,1565,Demographia World Urban Areas 16th ed.,2020
    2172797,1,Perth,1978000,1565,Demographia World Urban Areas 16th ed.,2020

`land_area_km2` may be empty (it is needed only by the alpha60 density normalisation);
lines starting with `#` are comments. The whole file is checked before anything is
written: every bad row is reported with its line number and nothing is loaded. Then,
in one transaction, the metros are replaced by the file's areas and every city is
assigned to its area (or to none: cities the table does not list rank at city level
and count in their country, but belong to no metro).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sqlalchemy import Table, bindparam, delete, insert, select, update

from swarmwatch.pipeline.places import load_places
from swarmwatch.store import Database
from swarmwatch.store.models import City, Metro

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "geoname_id",
    "area_id",
    "name",
    "population",
    "land_area_km2",
    "population_source",
    "population_year",
)
REQUIRED: frozenset[str] = frozenset(COLUMNS) - {"land_area_km2"}
#: Metro ids are 32-bit integers in every backend.
MAX_AREA_ID = 2**31 - 1
#: More bad rows than this and the rest are only counted: the first ones show the fault.
MAX_REPORTED_ERRORS = 20


class UrbanAreaTableError(ValueError):
    """The table cannot be loaded; `errors` holds one "line N: ..." message per fault."""

    def __init__(self, errors: list[str], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        more = self.total - len(errors)
        super().__init__("; ".join(errors) + (f"; and {more} more" if more > 0 else ""))


@dataclass(frozen=True, slots=True)
class UrbanArea:
    area_id: int
    name: str
    population: int
    land_area_km2: float | None
    population_source: str
    population_year: int
    geoname_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LoadedAreas:
    areas: int
    cities: int
    sources: tuple[str, ...]  # "source (year)" of every distinct source


def _int(value: str, what: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {value.strip()[:40]!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{what} must be between {low:,} and {high:,}, got {number:,}")
    return number


def _area(value: str) -> float | None:
    if not value.strip():
        return None
    try:
        area = float(value.strip())
    except ValueError:
        raise ValueError(f"land_area_km2 must be a number or empty, got {value[:40]!r}") from None
    if not 0 < area < 1e7:  # also refuses nan and inf
        raise ValueError(f"land_area_km2 must be above 0 and below 10,000,000, got {value!r}")
    return area


def _text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > 200:
        raise ValueError(f"{what} is longer than 200 characters")
    return text


def parse_urban_areas(lines: Iterable[str], known: set[int]) -> list[UrbanArea]:
    """Check a whole table; raise UrbanAreaTableError naming every bad line (line 1 is
    the header). `known` holds the geoname_ids of the loaded cities."""
    errors: list[str] = []
    total = 0

    def fault(line: int, message: str) -> None:
        nonlocal total
        total += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(f"line {line}: {message}")

    numbered = [(n, text) for n, text in enumerate(lines, 1) if not text.startswith("#")]
    reader = csv.reader(text for _, text in numbered)
    header_seen = False
    columns: dict[str, int] = {}
    first_of: dict[int, int] = {}  # geoname_id -> line
    areas: dict[int, tuple[int, UrbanArea]] = {}  # area_id -> (first line, area)
    members: dict[int, list[int]] = {}
    try:
        for row in reader:
            line = numbered[reader.line_num - 1][0]
            if not header_seen:
                header_seen = True
                names = [c.strip().lower() for c in row]
                missing = sorted(REQUIRED - set(names))
                if missing:
                    raise UrbanAreaTableError(
                        [
                            f"line {line}: the header lacks {', '.join(missing)} "
                            f"(columns: {', '.join(COLUMNS)})"
                        ]
                    )
                columns = {c: names.index(c) for c in COLUMNS if c in names}
                continue
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(names):
                fault(line, f"{len(row)} fields, the header has {len(names)}")
                continue
            try:
                gid = _int(row[columns["geoname_id"]], "geoname_id", 1, MAX_AREA_ID)
                area_id = _int(row[columns["area_id"]], "area_id", 1, MAX_AREA_ID)
                area = UrbanArea(
                    area_id,
                    _text(row[columns["name"]], "name"),
                    _int(row[columns["population"]], "population", 1, 10**10),
                    _area(row[columns["land_area_km2"]]) if "land_area_km2" in columns else None,
                    _text(row[columns["population_source"]], "population_source"),
                    _int(row[columns["population_year"]], "population_year", 1800, 2200),
                    (),
                )
            except ValueError as exc:
                fault(line, str(exc))
                continue
            if gid not in known:
                fault(line, f"geoname_id {gid} is not a loaded GeoNames city")
                continue
            if gid in first_of:
                fault(line, f"geoname_id {gid} is already in an area on line {first_of[gid]}")
                continue
            first_of[gid] = line
            seen = areas.get(area_id)
            if seen is None:
                areas[area_id] = (line, area)
            elif seen[1] != area:
                fault(
                    line,
                    f"area {area_id} has another name, population, land area, source or "
                    f"year than on line {seen[0]}",
                )
                continue
            members.setdefault(area_id, []).append(gid)
    except csv.Error as exc:
        fault(reader.line_num, f"not CSV: {exc}")
    if not header_seen:
        raise UrbanAreaTableError([f"line 1: no header (columns: {', '.join(COLUMNS)})"])
    if total:
        raise UrbanAreaTableError(errors, total)
    if not areas:
        raise UrbanAreaTableError(["the table has no rows"])
    return [
        UrbanArea(
            a.area_id,
            a.name,
            a.population,
            a.land_area_km2,
            a.population_source,
            a.population_year,
            tuple(members[area_id]),
        )
        for area_id, (_, a) in sorted(areas.items())
    ]


def load_urban_areas(db: Database, path: Path | str) -> LoadedAreas:
    """Replace the metros with the table's areas (see the module docstring)."""
    load_places(db)  # the cities the table refers to
    with db.engine.connect() as conn:
        cities = {
            gid: (country, lat, lon, pop)
            for gid, country, lat, lon, pop in conn.execute(
                select(City.geoname_id, City.country, City.lat, City.lon, City.population)
            )
        }
    with Path(path).open(encoding="utf-8-sig", newline="") as fh:
        areas = parse_urban_areas(fh, set(cities))
    with db.engine.begin() as conn:
        city = cast(Table, City.__table__)
        conn.execute(update(city).values(metro_id=None))
        conn.execute(delete(Metro))
        rows = []
        for area in areas:
            # The area sits at its most populous listed city, in that city's country.
            core = max(area.geoname_ids, key=lambda g: (cities[g][3], -g))
            country, lat, lon, _ = cities[core]
            rows.append(
                {
                    "id": area.area_id,
                    "name": area.name,
                    "country": country,
                    "lat": lat,
                    "lon": lon,
                    "population": area.population,
                    "land_area_km2": area.land_area_km2,
                    "population_source": area.population_source,
                    "population_year": area.population_year,
                }
            )
        conn.execute(insert(cast(Table, Metro.__table__)), rows)
        assign = (
            update(city)
            .where(city.c.geoname_id == bindparam("gid"))
            .values(metro_id=bindparam("area"))
        )
        conn.execute(assign, [{"gid": g, "area": a.area_id} for a in areas for g in a.geoname_ids])
    sources = tuple(sorted({f"{a.population_source} ({a.population_year})" for a in areas}))
    assigned = sum(len(a.geoname_ids) for a in areas)
    log.info("loaded %d urban areas over %d cities", len(areas), assigned)
    return LoadedAreas(areas=len(areas), cities=assigned, sources=sources)


__all__ = [
    "COLUMNS",
    "LoadedAreas",
    "UrbanArea",
    "UrbanAreaTableError",
    "load_urban_areas",
    "parse_urban_areas",
]
