"""The columnar batch: rows in, the same rows out, by index, slice and iteration."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from swarmwatch.store.batch import SightingColumns, SightingRow

T0 = datetime(2026, 11, 27, tzinfo=UTC)

_rows = st.builds(
    SightingRow,
    study_id=st.integers(1, 3),
    title_id=st.integers(1, 3),
    torrent_id=st.integers(1, 9),
    peer_key=st.binary(min_size=16, max_size=16),
    seen_at=st.integers(0, 10**6).map(lambda s: T0 + timedelta(seconds=s)),
    source=st.sampled_from(["tracker", "dht", "pex"]),
    vantage=st.sampled_from(["a", "b"]),
    seed=st.sampled_from([None, True, False]),
    country=st.sampled_from([None, "GB", "US"]),
    geoname_id=st.one_of(st.none(), st.integers(1, 10**7)),
    metro_id=st.one_of(st.none(), st.integers(1, 10**7)),
    h3_cell=st.one_of(st.none(), st.integers(1, 2**63)),
    asn=st.one_of(st.none(), st.integers(1, 2**31)),
)


def test_columns_are_the_row_fields_in_order() -> None:
    assert [f.name for f in fields(SightingColumns)] == list(SightingRow._fields)


@given(st.lists(_rows, max_size=30), st.integers(0, 30), st.integers(0, 30))
def test_round_trip(rows: list[SightingRow], start: int, stop: int) -> None:
    cols = SightingColumns.of(rows)
    assert len(cols) == len(rows) and bool(cols) == bool(rows)
    assert list(cols) == rows
    assert [cols[i] for i in range(len(rows))] == rows
    assert list(cols[start:stop]) == rows[start:stop]
    assert all(len(c) == len(rows) for c in cols.columns())
