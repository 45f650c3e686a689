"""A user's urban-area table: `swarmwatch places load FILE.csv`, the rankings and exports
that follow it, and alpha60's density normalisation.

The study is test_analysis_exact's hand-built one (Alpha 12 + Beta 3 peers, Gamma 20,
Delta 7, Eps 6), its peers stored before the table is loaded, with k = 1 so that no
complementary suppression hides the metros these tests are about.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from swarmwatch.analysis.export import export_study
from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.analysis.versioned import data_version
from swarmwatch.cli import app
from swarmwatch.pipeline.urban_areas import (
    COLUMNS,
    UrbanAreaTableError,
    load_urban_areas,
    parse_urban_areas,
)
from swarmwatch.store import Database
from swarmwatch.store.models import City, Metro, Study
from tests.test_analysis_exact import study_db  # noqa: F401  (the fixture)

runner = CliRunner()
HEADER = ",".join(COLUMNS)
SOURCE = "Test Atlas of Urban Areas"
# Alpha and Beta form area 7 (sparse: 800 people/km²); Gamma is area 9 (dense: 8,000).
GOOD = f"""# a comment line
{HEADER}
101,7,Alpha-Beta,400000,500,{SOURCE},2020
102,7,Alpha-Beta,400000,500,{SOURCE},2020
103,9,Gamma,2000000,250,{SOURCE},2020
201,11,Delta,500000,,Other Census,2018
"""


@pytest.fixture
def study(study_db: Database) -> Database:  # noqa: F811
    with study_db.session() as s:
        s.get(Study, 1).k_threshold = 1  # type: ignore[union-attr]
    return study_db


def _ranking(db: Database, metric: str, **kw: object) -> list[tuple[str, int, float | None]]:
    with db.engine.connect() as conn, db.session() as s:
        one = s.get(Study, 1)
        assert one is not None
        scope = resolve_scope(conn, one, title="A", exact=True)
        ranking = compute_ranking(conn, scope, level="metro", metric=metric, **kw)  # type: ignore[arg-type]
    return [(r.place, r.peers, r.alpha60_score) for r in ranking.rows]


def test_load_replaces_metros_for_peers_already_stored(
    study: Database,
    tmp_path: Path,
) -> None:
    path = tmp_path / "areas.csv"
    path.write_text(GOOD, encoding="utf-8")
    with study.engine.connect() as conn:
        version = data_version(conn, [1])
    before = _ranking(study, "absolute")
    assert [(p, n) for p, n, _ in before] == [
        ("Gamma", 20),
        ("Alpha", 15),
        ("Delta", 7),
        ("Eps", 6),
    ]
    result = runner.invoke(app, ["places", "load", str(path)])
    assert result.exit_code == 0, result.output
    assert "loaded 3 urban areas over 4 cities" in result.output
    with study.engine.connect() as conn:  # cached answers know the places moved
        assert data_version(conn, [1]) != version
    assert f"{SOURCE} (2020)" in result.output and "Other Census (2018)" in result.output
    with study.session() as s:
        assert s.get(City, 102).metro_id == 7  # type: ignore[union-attr]
        assert s.get(City, 202).metro_id is None  # type: ignore[union-attr]  (not listed)
        gamma = s.get(Metro, 9)
        assert gamma is not None and gamma.population == 2_000_000
        assert (gamma.land_area_km2, gamma.population_source, gamma.population_year) == (
            250.0,
            SOURCE,
            2020,
        )
        assert gamma.country == "FR" and (gamma.lat, gamma.lon) == (45.0, 5.0)
    # The peers stored under the old metros rank under the loaded areas; Eps, in no
    # area, is withheld at metro level (it still counts in its city and country).
    after = _ranking(study, "absolute")
    assert [(p, n) for p, n, _ in after] == [("Gamma", 20), ("Alpha-Beta", 15), ("Delta", 7)]
    with study.engine.connect() as conn, study.session() as s:
        one = s.get(Study, 1)
        assert one is not None
        ranking = compute_ranking(
            conn,
            resolve_scope(conn, one, title="A", exact=True),
            level="metro",
            metric="per_capita",
        )
    assert ranking.method["population_source"].startswith(f"Other Census (2018); {SOURCE} (2020)")
    assert ranking.method["population_years"] == [2018, 2020]
    assert [r.per_100k for r in ranking.rows] == pytest.approx([15 / 4, 7 / 5, 20 / 20])


def test_bad_rows_are_named_and_nothing_is_loaded(
    study: Database,
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        f"""{HEADER}
101,7,Alpha,400000,500,{SOURCE},2020
102,7,Alpha,400001,500,{SOURCE},2020
999999,8,Nowhere,1000,,{SOURCE},2020
103,x,Gamma,1000,,{SOURCE},2020
201,11,Delta,-5,,{SOURCE},2020
202,12,Eps,1000,-1,{SOURCE},2020
101,13,Again,1000,,{SOURCE},2020
202,12,Eps,1000,,{SOURCE},19
202,12,Eps
""",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["places", "load", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert [line.split(": ")[2] for line in lines] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 8",
        "line 9",
        "line 10",
    ]
    assert "area 7 has another name, population" in lines[0] and "line 2" in lines[0]
    assert "999999 is not a loaded GeoNames city" in lines[1]
    assert "area_id must be a whole number, got 'x'" in lines[2]
    assert "population must be between 1" in lines[3]
    assert "land_area_km2 must be above 0" in lines[4]
    assert "101 is already in an area on line 2" in lines[5]
    assert "population_year must be between 1,800" in lines[6]
    assert "3 fields, the header has 7" in lines[7]
    assert "nothing was loaded" in result.output
    with study.session() as s:  # the GeoNames-built metros are untouched
        assert s.get(City, 102).metro_id == 101  # type: ignore[union-attr]
        assert sorted(s.scalars(select(Metro.id))) == [101, 103, 201, 202]
    path.write_text("geoname_id,name\n101,Alpha\n", encoding="utf-8")
    result = runner.invoke(app, ["places", "load", str(path)])
    assert result.exit_code == 2
    assert "line 1: the header lacks area_id, population" in result.output
    result = runner.invoke(app, ["places", "load", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_readme_example_table_loads(db: Database, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("```csv\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "perth.csv"
    path.write_text(example, encoding="utf-8")
    loaded = load_urban_areas(db, path)
    assert (loaded.areas, loaded.cities) == (1, 2)
    assert loaded.sources == ("Demographia World Urban Areas 16th ed. (2020)",)
    with db.session() as s:
        perth = s.get(Metro, 1)
        assert perth is not None and perth.name == "Perth" and perth.country == "AU"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=12))
def test_any_text_is_a_table_or_a_named_fault(lines: list[str]) -> None:
    try:
        areas = parse_urban_areas([HEADER, *lines], {101, 102, 103})
    except UrbanAreaTableError as exc:
        assert exc.errors and all(e.startswith("line ") or "no rows" in e for e in exc.errors)
    else:
        assert areas and all(set(a.geoname_ids) <= {101, 102, 103} for a in areas)


def test_alpha60_density_ranks_by_peers_over_rescaled_density(
    study: Database,
    tmp_path: Path,
) -> None:
    path = tmp_path / "areas.csv"
    path.write_text(GOOD, encoding="utf-8")
    load_urban_areas(study, path)
    # Densities 800 (Alpha-Beta) and 8,000 (Gamma) span the table: rescaled onto
    # [1, 1000] they are 1 and 1000. Delta has no land area: alpha60 leaves it out.
    rows = _ranking(study, "alpha60_density")
    assert [(p, n) for p, n, _ in rows] == [("Alpha-Beta", 15), ("Gamma", 20)]
    assert [s for _, _, s in rows] == pytest.approx([15 / 1, 20 / 1000])
    # Per capita ranks Delta (1.4 per 100k) above Gamma (1.0): alpha60 leaves it out,
    # and its score divides Gamma by 1000 where residents differ 5-fold.
    assert [p for p, _, _ in _ranking(study, "per_capita")] == ["Alpha-Beta", "Delta", "Gamma"]
    paths = export_study(study, 1, tmp_path / "out", title="A", exact=True)
    names = {p.name for p in paths}
    assert "rankings_metro_alpha60_density.csv" in names
    text = (tmp_path / "out" / "rankings_metro_alpha60_density.csv").read_text()
    rows_csv = list(csv.DictReader(io.StringIO(text)))
    assert list(rows_csv[0])[-3:] == ["land_area_km2", "density_per_km2", "alpha60_score"]
    assert math.isclose(float(rows_csv[0]["alpha60_score"]), 15.0)
    side = json.loads((tmp_path / "out" / "rankings.json").read_text())
    meta = side["rankings_metro_alpha60_density.csv"]
    assert "alpha60" in meta["normalisation"] and "not per capita" in meta["normalisation"]
    assert SOURCE in side["rankings_metro_per_capita.csv"]["population_source"]
    assert side["rankings_metro_per_capita.csv"]["population_years"] == [2018, 2020]
    with study.engine.connect() as conn, study.session() as s:
        study = s.get(Study, 1)
        assert study is not None
        with pytest.raises(ValueError, match="level=metro"):
            compute_ranking(
                conn, resolve_scope(conn, study), level="city", metric="alpha60_density"
            )
