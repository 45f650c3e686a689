"""Packed frames (store.packed, rollups.rollup_frame_packed): the layout round-trips, refuses
what it cannot have written, and an open frame's rows are read by primary key."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from swarmwatch.store import Database
from swarmwatch.store.packed import FrameCounts, PackedError, merge_counts, pack, triples, unpack

int64 = st.integers(min_value=0, max_value=2**62)
counts = st.dictionaries(int64, st.tuples(int64, int64), max_size=300)


@given(counts)
def test_pack_round_trips(by_key: dict[int, tuple[int, int]]) -> None:
    frame = FrameCounts.from_dict(by_key)
    assert unpack(pack(frame)) == frame
    assert unpack(pack(frame)).as_dict() == by_key


@given(st.binary(max_size=400))
def test_unpack_refuses_arbitrary_bytes_with_one_error(blob: bytes) -> None:
    try:
        frame = unpack(blob)
    except PackedError:
        return
    assert unpack(pack(frame)) == frame  # anything accepted is a frame pack() writes


@given(counts, st.integers(min_value=1, max_value=20))
def test_a_cut_or_padded_blob_is_refused(by_key: dict[int, tuple[int, int]], cut: int) -> None:
    blob = pack(FrameCounts.from_dict(by_key))
    with pytest.raises(PackedError):
        unpack(blob[: max(0, len(blob) - cut)])
    with pytest.raises(PackedError):
        unpack(blob + b"\x00" * cut)


def test_a_blob_with_the_wrong_count_or_layout_is_refused() -> None:
    blob = pack(FrameCounts.from_dict({5: (1, 2), 9: (3, 4)}))
    with pytest.raises(PackedError):
        unpack(b"\x02" + blob[1:])
    with pytest.raises(PackedError):
        unpack(blob[:1] + (3).to_bytes(4, "little") + blob[5:])
    with pytest.raises(PackedError):
        unpack(blob[:5] + zlib.compress(b"\x00" * 47))


def test_merge_sums_parts_per_key_and_drops_empty_keys() -> None:
    merged = merge_counts([[(7, 1, 10), (3, 2, 20)], [(7, 4, 40), (11, 0, 0)]])
    assert list(triples(merged)) == [(3, 2, 20), (7, 5, 50)]


def test_open_frames_rows_are_read_by_primary_key(db: Database) -> None:
    """The frames query reads an open frame's rows by the primary key's prefix (the top
    cities' index is gone), and a packed frame by its key."""
    if not db.is_sqlite:
        pytest.skip("SQLite's query plan")
    queries = {
        "rollup_frame": "SELECT h3_cell, peers, peers_rk FROM rollup_frame WHERE title_id IN (1, 2)"
        " AND interval_s = 3600 AND bucket = 7 AND res = 5",
        "rollup_frame_city": "SELECT geoname_id, peers, peers_rk FROM rollup_frame_city"
        " WHERE title_id IN (1, 2) AND interval_s = 3600 AND bucket = 7",
        "rollup_frame_packed": "SELECT cells FROM rollup_frame_packed WHERE title_id IN (1, 2)"
        " AND interval_s = 3600 AND bucket = 7",
    }
    with db.engine.connect() as conn:
        for table, sql in queries.items():
            plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "SCAN" not in plan, (table, plan)
            assert "PRIMARY KEY" in plan or "sqlite_autoindex" in plan, (table, plan)
            assert "bucket=?" in plan, (table, plan)
