"""replay coverage: which minutes of which replayed streams are counted.

`swarmwatch ingest` notes, per stream (infohash, source, vantage), the minutes whose
lines are all counted (replay_span) and, for the minutes where a file began or ended,
keyed digests of the sightings counted there (replay_edge). Any later file that
overlaps those minutes, however it overlaps, skips what was counted (store.coverage).
Files ingested before this revision are known only by their prefix marks
(replay_progress, kept, now `covered` false): run again, such a file skips the lines
those marks hold and fills in their coverage as it goes.

Revision ID: 0011_i17g_replay
Revises: 0010_i15c_privacy
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_i17g_replay"
down_revision: str | None = "0010_i15c_privacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _stream() -> list[sa.Column[str]]:
    return [
        sa.Column("infohash", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("vantage", sa.String(length=100), nullable=False),
    ]


def upgrade() -> None:
    # New marks are written with their lines' coverage (the default); the ones already
    # here are not, and stay the only record that their lines are counted.
    op.add_column(
        "replay_progress",
        sa.Column("covered", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.execute(sa.text("UPDATE replay_progress SET covered = :no").bindparams(no=False))
    op.create_table(
        "replay_span",
        *_stream(),
        sa.Column("lo", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hi", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("infohash", "source", "vantage", "lo", name=op.f("pk_replay_span")),
    )
    op.create_table(
        "replay_edge",
        *_stream(),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("part", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("digests", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint(
            "infohash", "source", "vantage", "slot", "part", name=op.f("pk_replay_edge")
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("replay_progress") as batch:
        batch.drop_column("covered")
    op.drop_table("replay_edge")
    op.drop_table("replay_span")
