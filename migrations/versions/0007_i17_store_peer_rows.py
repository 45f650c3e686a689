"""peer rows instead of sighting rows: sources, vantages and a record key per peer; batch tokens.

From here the writer adds no row per sighting: a repeat sighting updates its peer's
counters and the rollups. Peers gain the bitmasks of the sources and vantages that
saw them, a fixed random record key (cell-key perturbation) and their latest hour and
day, and bitmaps of the hours and days they moved on from (presence costs no
rollup_presence row within the bitmaps' 128 hours and 64 days; NULL for existing
peers, which are asked of rollup_presence until their next sighting); a `vantage` table
gives each vantage its bit; `write_batch` holds the token of each committed batch
(what a retry after an uncertain commit asks); `replay_progress` how far a replayed
file is stored (resumable `swarmwatch ingest`; its digests are keyed with a secret in
`store_secret`). Every rollup count gains the sum of
its peers' record keys beside it (`<count>_rk`). Existing sighting rows are kept as
they are (read by nothing) and existing peers are backfilled from them; rollup rows
counted before this migration hold 0 record-key sums for what they counted then.

Revision ID: 0007_i17_store
Revises: 0006_i15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_i17_store"
down_revision: str | None = "0006_i15"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration must not change when the application
# does. Sources' bits in declared order (swarmwatch.sightings.Source), vantages' by id.
_SOURCE_BITS = {"tracker": 1, "dht": 2, "pex": 4, "swarm": 8, "replay": 16}
_VANTAGE_BITS = 63
#: The record-key sums each rollup table gains, one per count of peers.
_RECORD_KEY_SUMS = {
    "rollup_place": ("peers_rk", "seeds_rk"),
    "rollup_place_day": ("peers_rk", "seeds_rk"),
    "rollup_cell": ("peers_rk",),
    "rollup_cell_day": ("peers_rk",),
    "rollup_frame": ("peers_rk",),
    "rollup_frame_city": ("peers_rk",),
    "rollup_active": ("peers_rk", "city_peers_rk"),
    "rollup_activity": ("new_peers_rk",),
    "rollup_peer_times": ("peers_rk",),
}


def upgrade() -> None:
    op.create_table(
        "vantage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vantage")),
        sa.UniqueConstraint("name", name=op.f("uq_vantage_name")),
    )
    op.create_table(
        "write_batch",
        sa.Column("token", sa.LargeBinary(length=16), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_write_batch")),
    )
    op.create_table(
        "replay_progress",
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_replay_progress")),
    )
    op.create_table(
        "store_secret",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.LargeBinary(length=64), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_store_secret")),
    )
    op.add_column("peer", sa.Column("sources", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "peer", sa.Column("vantages", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("peer", sa.Column("record_key", sa.Integer(), server_default="0", nullable=False))
    for column in ("last_hour", "last_day", "prev_hour", "prev_day", "hour_base", "day_base"):
        op.add_column("peer", sa.Column(column, sa.Integer(), nullable=True))
    for column in ("hours0", "hours1", "days"):
        op.add_column(
            "peer", sa.Column(column, sa.BigInteger(), server_default="0", nullable=False)
        )
    for table, columns in _RECORD_KEY_SUMS.items():
        for column in columns:
            op.add_column(
                table, sa.Column(column, sa.BigInteger(), server_default="0", nullable=False)
            )
    _backfill()


def _backfill() -> None:
    conn = op.get_bind()
    # Vantages in name order, so a database's bits do not depend on row order.
    names = [
        row[0] for row in conn.execute(sa.text("SELECT DISTINCT vantage FROM sighting ORDER BY 1"))
    ]
    if names:
        conn.execute(
            sa.text("INSERT INTO vantage (name) VALUES (:name)"), [{"name": n} for n in names]
        )
    _backfill_record_keys(conn)
    if not names:
        return  # no sightings: no peer saw any source
    ids = dict(conn.execute(sa.text("SELECT name, id FROM vantage")).all())
    params: dict[str, object] = {}
    vantage_case = ["CASE s.vantage"]
    for i, name in enumerate(names):
        params[f"v{i}"] = name
        params[f"b{i}"] = 1 << (min(int(ids[name]), _VANTAGE_BITS) - 1)
        vantage_case.append(f" WHEN :v{i} THEN :b{i}")
    vantage_case.append(" ELSE 0 END")
    source_case = ["CASE s.source"]
    for source, bit in _SOURCE_BITS.items():
        source_case.append(f" WHEN '{source}' THEN {bit}")
    source_case.append(f" ELSE {1 << len(_SOURCE_BITS)} END")
    # Folded per peer once (sightings have no index by peer), then copied by key.
    conn.execute(
        sa.text(
            "CREATE TEMPORARY TABLE peer_bits_0006 (title_id INTEGER NOT NULL,"
            " peer_key BYTEA NOT NULL, sources INTEGER NOT NULL, vantages BIGINT NOT NULL,"
            " PRIMARY KEY (title_id, peer_key))".replace(
                "BYTEA", "BLOB" if conn.dialect.name == "sqlite" else "BYTEA"
            )
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO peer_bits_0006 (title_id, peer_key, sources, vantages)"
            f" SELECT s.title_id, s.peer_key, sum(DISTINCT {''.join(source_case)}),"
            f" sum(DISTINCT {''.join(vantage_case)})"
            " FROM sighting s GROUP BY s.title_id, s.peer_key"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "UPDATE peer SET"
            " sources = COALESCE((SELECT b.sources FROM peer_bits_0006 b"
            " WHERE b.title_id = peer.title_id AND b.peer_key = peer.peer_key), 0),"
            " vantages = COALESCE((SELECT b.vantages FROM peer_bits_0006 b"
            " WHERE b.title_id = peer.title_id AND b.peer_key = peer.peer_key), 0)"
        )
    )
    conn.execute(sa.text("DROP TABLE peer_bits_0006"))


def _backfill_record_keys(conn: sa.Connection) -> None:
    # A fixed random record key per existing peer, in [0, 4096) as the writer draws them.
    if conn.dialect.name == "sqlite":
        conn.execute(sa.text("UPDATE peer SET record_key = abs(random() % 4096)"))
    else:
        conn.execute(sa.text("UPDATE peer SET record_key = floor(random() * 4096)::int"))


def downgrade() -> None:
    for table, columns in _RECORD_KEY_SUMS.items():
        with op.batch_alter_table(table) as batch:
            for column in reversed(columns):
                batch.drop_column(column)
    with op.batch_alter_table("peer") as batch:
        for column in ("days", "hours1", "hours0", "day_base", "hour_base"):
            batch.drop_column(column)
        for column in ("prev_day", "prev_hour", "last_day", "last_hour"):
            batch.drop_column(column)
        batch.drop_column("record_key")
        batch.drop_column("vantages")
        batch.drop_column("sources")
    op.drop_table("store_secret")
    op.drop_table("replay_progress")
    op.drop_table("write_batch")
    op.drop_table("vantage")
