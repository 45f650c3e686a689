"""peer times: peers of a title by how many sightings they have (Chao1's f1 and f2).

Kept by the writer, so the summary no longer counts them over the peer table.
Existing databases are backfilled from their peer rows.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same statement as swarmwatch.store.rollups.PEER_TIMES_FROM_PEERS, written out:
# a migration must not change when the application code does.
_BACKFILL = (
    "INSERT INTO rollup_peer_times (title_id, times, peers)"
    " SELECT title_id, sightings, count(*) FROM peer WHERE sightings IN (1, 2)"
    " GROUP BY title_id, sightings"
)


def upgrade() -> None:
    op.create_table(
        "rollup_peer_times",
        sa.Column("title_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("times", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("peers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["title_id"],
            ["title.id"],
            name=op.f("fk_rollup_peer_times_title_id_title"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("title_id", "times", name=op.f("pk_rollup_peer_times")),
        sqlite_with_rowid=False,
    )
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.drop_table("rollup_peer_times")
