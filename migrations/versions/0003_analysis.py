"""analysis: ingest-time rollups behind estimates, rankings and frames.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollup_active",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("interval_s", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.Column("city_peers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_active_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("title_id", "interval_s", "bucket", name=op.f("pk_rollup_active")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_activity",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("vantage", sa.String(length=100), nullable=False),
        sa.Column("sightings", sa.BigInteger(), nullable=False),
        sa.Column("new_peers", sa.BigInteger(), nullable=False),
        sa.Column("seed_sightings", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_activity_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "day", "source", "vantage", name=op.f("pk_rollup_activity")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_cell",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("res", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("h3_cell", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_cell_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("title_id", "res", "h3_cell", name=op.f("pk_rollup_cell")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_cell_day",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("vantage", sa.String(length=100), nullable=False),
        sa.Column("res", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("h3_cell", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_cell_day_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "day", "vantage", "res", "h3_cell", name=op.f("pk_rollup_cell_day")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_frame",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("interval_s", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("res", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("h3_cell", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_frame_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "interval_s", "res", "bucket", "h3_cell", name=op.f("pk_rollup_frame")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_frame_city",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("interval_s", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("geoname_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_frame_city_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "interval_s", "bucket", "geoname_id", name=op.f("pk_rollup_frame_city")
        ),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_rollup_frame_city_top",
        "rollup_frame_city",
        ["title_id", "interval_s", "bucket", "peers"],
        unique=False,
    )
    op.create_table(
        "rollup_place",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("geoname_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("metro_id", sa.Integer(), nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.Column("seeds", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_place_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("title_id", "geoname_id", "country", name=op.f("pk_rollup_place")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_place_day",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("vantage", sa.String(length=100), nullable=False),
        sa.Column("geoname_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("metro_id", sa.Integer(), nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.Column("seeds", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_place_day_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "day", "vantage", "geoname_id", "country", name=op.f("pk_rollup_place_day")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_presence",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("interval_s", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("peer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_presence_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "title_id", "interval_s", "bucket", "peer_id", name=op.f("pk_rollup_presence")
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("rollup_presence")
    op.drop_table("rollup_place_day")
    op.drop_table("rollup_place")
    op.drop_index("ix_rollup_frame_city_top", table_name="rollup_frame_city")
    op.drop_table("rollup_frame_city")
    op.drop_table("rollup_frame")
    op.drop_table("rollup_cell_day")
    op.drop_table("rollup_cell")
    op.drop_table("rollup_activity")
    op.drop_table("rollup_active")
