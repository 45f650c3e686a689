"""packed frames: a closed frame's cells and cities as one blob each, not a row per key;
published frames kept across server starts.

1. rollup_frame_packed holds, per (title, interval, bucket), the frame's counts and
   record-key sums per H3 cell (at the stored resolution, 5) and per city, packed as
   swarmwatch.store.packed's layout 1 describes. Every frame's rows are packed here and
   deleted; the writer keeps only open frames as rows from now on and packs them when
   they close (late sightings' rows are read beside the blob and packed at the next batch).
   Cell rows at coarser resolutions (from before frames were stored at res 5 only) are
   read by nothing and stay as they are.
2. ix_rollup_frame_city_top goes: the top cities of a frame are taken from its blob (or,
   while it is open, its rows, read by primary key), never by a scan of that index.
3. frame_answer keeps the published frames a server computed, by question and version,
   so that the next server start reads them back instead of computing every frame again
   (swarmwatch.store.keptframes). It starts empty.

Revision ID: 0012_i17f_query
Revises: 0011_i17g_replay
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from itertools import accumulate, chain

import sqlalchemy as sa
from alembic import op

revision: str = "0012_i17f_query"
down_revision: str | None = "0011_i17g_replay"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORED_RES = 5


def pack_v1(triples: Sequence[tuple[int, int, int]]) -> bytes:
    """swarmwatch.store.packed.pack's layout 1, written out: a migration must not change
    when the application code does (tests/test_migrations.py checks the two agree).
    triples are (key, peers, record-key sum), keys ascending and distinct."""
    keys = [k for k, _, _ in triples]
    gaps = keys[:1] + [b - a for a, b in zip(keys, keys[1:], strict=False)]
    values = chain(gaps, (n for _, n, _ in triples), (rk for _, _, rk in triples))
    raw = b"".join(struct.pack("<q", v) for v in values)
    shuffled = b"".join(raw[i::8] for i in range(8))
    return struct.pack("<BI", 1, len(keys)) + zlib.compress(shuffled, 6)


def upgrade() -> None:
    op.create_table(
        "rollup_frame_packed",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("interval_s", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cells", sa.LargeBinary(), nullable=False),
        sa.Column("cities", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_frame_packed_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "interval_s", "bucket", name=op.f("pk_rollup_frame_packed")
        ),
    )
    op.drop_index("ix_rollup_frame_city_top", table_name="rollup_frame_city")
    op.create_table(
        "frame_answer",
        sa.Column("question", sa.LargeBinary(length=16), nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.LargeBinary(length=16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
            name=op.f("fk_frame_answer_study_id_study"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("question", "bucket", name=op.f("pk_frame_answer")),
    )
    op.create_index(op.f("ix_frame_answer_study_id"), "frame_answer", ["study_id"])
    conn = op.get_bind()
    frames = conn.execute(
        sa.text(
            "SELECT title_id, interval_s, bucket FROM rollup_frame WHERE res = :r"
            " UNION SELECT title_id, interval_s, bucket FROM rollup_frame_city"
        ),
        {"r": STORED_RES},
    ).all()
    for title_id, interval, bucket in frames:
        key = {"t": title_id, "i": interval, "b": bucket}
        cells = conn.execute(
            sa.text(
                "SELECT h3_cell, peers, peers_rk FROM rollup_frame WHERE title_id = :t"
                " AND interval_s = :i AND res = :r AND bucket = :b ORDER BY h3_cell"
            ),
            {**key, "r": STORED_RES},
        ).all()
        cities = conn.execute(
            sa.text(
                "SELECT geoname_id, peers, peers_rk FROM rollup_frame_city WHERE title_id = :t"
                " AND interval_s = :i AND bucket = :b ORDER BY geoname_id"
            ),
            key,
        ).all()
        conn.execute(
            sa.text(
                "INSERT INTO rollup_frame_packed (title_id, interval_s, bucket, cells, cities)"
                " VALUES (:t, :i, :b, :cells, :cities)"
            ),
            {
                **key,
                "cells": pack_v1([tuple(r) for r in cells]),
                "cities": pack_v1([tuple(r) for r in cities]),
            },
        )
    conn.execute(sa.text("DELETE FROM rollup_frame WHERE res = :r"), {"r": STORED_RES})
    conn.execute(sa.text("DELETE FROM rollup_frame_city"))


def unpack_v1(blob: bytes) -> list[tuple[int, int, int]]:
    """pack_v1's inverse."""
    layout, n = struct.unpack_from("<BI", blob)
    assert layout == 1, layout
    shuffled = zlib.decompress(blob[5:])
    raw = bytearray(len(shuffled))
    for i in range(8):
        raw[i::8] = shuffled[i * 3 * n : (i + 1) * 3 * n]
    values = [v for (v,) in struct.iter_unpack("<q", raw)]
    keys = list(accumulate(values[:n]))
    return list(zip(keys, values[n : 2 * n], values[2 * n :], strict=True))


def downgrade() -> None:
    conn = op.get_bind()
    blobs = conn.execute(
        sa.text("SELECT title_id, interval_s, bucket, cells, cities FROM rollup_frame_packed")
    ).all()
    for title_id, interval, bucket, cells, cities in blobs:
        key = {"t": title_id, "i": interval, "b": bucket}
        for cell, n, rk in unpack_v1(cells):
            conn.execute(
                sa.text(
                    "INSERT INTO rollup_frame (title_id, interval_s, res, bucket, h3_cell,"
                    " peers, peers_rk) VALUES (:t, :i, :r, :b, :k, :n, :rk) ON CONFLICT"
                    " (title_id, interval_s, res, bucket, h3_cell) DO UPDATE SET"
                    " peers = rollup_frame.peers + excluded.peers,"
                    " peers_rk = rollup_frame.peers_rk + excluded.peers_rk"
                ),
                {**key, "r": STORED_RES, "k": cell, "n": n, "rk": rk},
            )
        for gid, n, rk in unpack_v1(cities):
            conn.execute(
                sa.text(
                    "INSERT INTO rollup_frame_city (title_id, interval_s, bucket, geoname_id,"
                    " peers, peers_rk) VALUES (:t, :i, :b, :k, :n, :rk) ON CONFLICT"
                    " (title_id, interval_s, bucket, geoname_id) DO UPDATE SET"
                    " peers = rollup_frame_city.peers + excluded.peers,"
                    " peers_rk = rollup_frame_city.peers_rk + excluded.peers_rk"
                ),
                {**key, "k": gid, "n": n, "rk": rk},
            )
    op.drop_table("frame_answer")
    op.create_index(
        "ix_rollup_frame_city_top",
        "rollup_frame_city",
        ["title_id", "interval_s", "bucket", "peers"],
        unique=False,
    )
    op.drop_table("rollup_frame_packed")
