"""urban areas: a metro's land area and the source and year of its population.

`swarmwatch places load FILE.csv` fills them from a user's table (Demographia, GHSL,
a statistics office); metros built from GeoNames leave them empty.

Revision ID: 0008_i16_percapita
Revises: 0007_i17_store
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_i16_percapita"
down_revision: str | None = "0007_i17_store"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("metro") as batch:
        batch.add_column(sa.Column("land_area_km2", sa.Float(), nullable=True))
        batch.add_column(sa.Column("population_source", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("population_year", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metro") as batch:
        batch.drop_column("population_year")
        batch.drop_column("population_source")
        batch.drop_column("land_area_km2")
