"""operations: crawl workers and their leases on swarms (per vantage point).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crawl_worker",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("vantage", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leases", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_crawl_worker")),
    )
    op.create_index("ix_crawl_worker_vantage", "crawl_worker", ["vantage"])
    op.create_table(
        "crawl_lease",
        sa.Column("infohash", sa.String(length=64), nullable=False),
        sa.Column("vantage", sa.String(length=100), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("infohash", "vantage", name=op.f("pk_crawl_lease")),
    )
    op.create_index("ix_crawl_lease_worker", "crawl_lease", ["worker_id"])


def downgrade() -> None:
    op.drop_index("ix_crawl_lease_worker", table_name="crawl_lease")
    op.drop_table("crawl_lease")
    op.drop_index("ix_crawl_worker_vantage", table_name="crawl_worker")
    op.drop_table("crawl_worker")
