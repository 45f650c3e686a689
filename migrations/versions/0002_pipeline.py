"""pipeline: anomaly counts per torrent x source x reason, and the GeoIP databases used.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "anomaly",
        sa.Column("torrent_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name=op.f("fk_anomaly_study_id_study"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["torrent_id"],
            ["torrent.id"],
            name=op.f("fk_anomaly_torrent_id_torrent"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("torrent_id", "source", "reason", name=op.f("pk_anomaly")),
    )
    with op.batch_alter_table("anomaly", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_anomaly_study_id"), ["study_id"], unique=False)

    op.create_table(
        "geoip_database",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("database_type", sa.String(length=100), nullable=False),
        sa.Column("build_epoch", sa.BigInteger(), nullable=False),
        sa.Column("embedded", sa.Boolean(), nullable=False),
        sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_geoip_database")),
        sa.UniqueConstraint(
            "kind",
            "database_type",
            "build_epoch",
            name=op.f("uq_geoip_database_kind_database_type_build_epoch"),
        ),
    )


def downgrade() -> None:
    op.drop_table("geoip_database")
    with op.batch_alter_table("anomaly", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anomaly_study_id"))
    op.drop_table("anomaly")
