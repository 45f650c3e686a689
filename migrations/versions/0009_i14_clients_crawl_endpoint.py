"""crawl endpoints: keyed digests of every worker's own endpoints, so no crawler counts itself.

Revision ID: 0009_i14_clients
Revises: 0008_i16_percapita
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_i14_clients"
down_revision: str | None = "0008_i16_percapita"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crawl_endpoint_key",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("key", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crawl_endpoint_key")),
    )
    op.create_table(
        "crawl_endpoint",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", "digest", name=op.f("pk_crawl_endpoint")),
    )
    op.create_index("ix_crawl_endpoint_expires", "crawl_endpoint", ["expires_at"])
    op.add_column("sample", sa.Column("known_peers", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("sample", "known_peers")
    op.drop_index("ix_crawl_endpoint_expires", table_name="crawl_endpoint")
    op.drop_table("crawl_endpoint")
    op.drop_table("crawl_endpoint_key")
