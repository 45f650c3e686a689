"""The ingest benchmark, small: its streams, its storage floor, and the figures it prints.

No figure is compared with a time; what is checked is what the figures are made of.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench.ingest import (
    FLOOR_TABLES,
    _fresh_database,
    _ingest_measured,
    public_addresses,
    run_benchmark,
    storage_floor,
    unique_stream,
)
from swarmwatch.geoip import embedded_city_db


def _table(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        conn.close()


def test_the_storage_floor_stores_exactly_the_rows_the_pipeline_stored(tmp_path: Path) -> None:
    source = tmp_path / "run.db"
    db = _fresh_database(source)
    _, stats, _ = _ingest_measured(
        db, embedded_city_db(), unique_stream(public_addresses(1_500, seed=7)), 0, True
    )
    db.dispose()
    assert stats["stored"] == 1_500 and stats["new_peers"] == 1_500

    wall, cpu, rows = storage_floor(source, batches=3, into=tmp_path / "floor.db")
    assert wall > 0 and cpu > 0
    # Per all-unique peer: its peer row, which also holds its presence in its latest
    # (here: only) hour and day; per batch, its token. No row per sighting.
    assert rows == 1_500 + stats["batches"]
    for table in FLOOR_TABLES:
        stored = _table(source, table)
        assert stored or table == "rollup_presence", table  # no presence row: see above
        assert _table(tmp_path / "floor.db", table) == stored, table


def test_the_benchmark_prints_its_figures_and_both_baselines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_benchmark(peers=400, unique=800, workers=1)
    printed = capsys.readouterr().out
    for line in (
        "repeat stream",
        "all-unique stream",
        "bare maxminddb",
        "storage floor",
        "CPU budget",
    ):
        assert line in printed
    assert figures["repeat_rows_stored"] >= 400  # 5 repeats within seconds: coalesced
    assert figures["unique_rows_stored"] == 800
    # A peer row per peer (presence in its only frames included), a token per batch.
    assert 1 <= figures["unique_floor_rows"] - 800 <= 800
    for name in (
        "repeat_sightings_per_s",
        "unique_sightings_per_s",
        "bare_lookups_per_s",
        "repeat_floor_sightings_per_s",
        "unique_floor_sightings_per_s",
        "peak_rss_mib",
        "unique_ceiling_vs_bare_without_rollups",
    ):
        assert figures[name] > 0, name
    # The ceilings are the cores' CPU over what a sighting cost (main and worker).
    unique_cpu = (
        figures["unique_cpu_us_per_sighting"] + figures["unique_worker_cpu_us_per_sighting"]
    )
    repeat_cpu = (
        figures["repeat_cpu_us_per_sighting"] + figures["repeat_worker_cpu_us_per_sighting"]
    )
    cores, bare = figures["cores"], figures["bare_cpu_us_per_lookup"]
    assert cores >= 1
    assert figures["unique_ceiling_vs_bare"] == pytest.approx(cores * bare / unique_cpu)
    assert figures["unique_cpu_vs_bare"] == pytest.approx(unique_cpu / bare)
    assert figures["repeat_ceiling_sightings_per_s"] == pytest.approx(cores * 1e6 / repeat_cpu)
