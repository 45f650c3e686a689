"""The rankings CSV opens cleanly in pandas (what a paper's analysis script does first)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from swarmwatch.analysis.export import export_study
from swarmwatch.analysis.rankings import CSV_COLUMNS
from swarmwatch.store import Database
from tests.test_analysis_exact import study_db  # noqa: F401  (the hand-built study)


def test_every_rankings_csv_reads_in_pandas(study_db: Database, tmp_path: Path) -> None:  # noqa: F811
    files = export_study(study_db, 1, tmp_path)
    csvs = [f for f in files if f.suffix == ".csv"]
    assert len(csvs) == 8  # absolute and per capita, for each of the four levels
    for path in csvs:
        raw = path.read_bytes()
        raw.decode("utf-8")  # strict UTF-8
        frame = pd.read_csv(io.BytesIO(raw), encoding="utf-8")
        assert tuple(frame.columns) == CSV_COLUMNS, (path.name, list(frame.columns))
        assert len(frame) > 0
        assert frame["peers"].dtype.kind == "i"  # counts are integers, not strings
        assert (frame["peers"] >= 5).all()  # k = 5: nothing below it is published
        assert frame["rank"].is_monotonic_increasing
