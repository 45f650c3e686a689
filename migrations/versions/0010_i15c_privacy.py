"""privacy leftovers: the replay key under custody; record-key sums for sources, vantages
and rollups written before 0007.

1. store_secret's values (the key of replay_progress's digests) were stored in plain,
   beside the data they protect: they are wrapped in place with the deployment secret,
   as 0006 wrapped the study keys, so existing replay marks stay valid. This needs the
   secret when any exist (set SWARMWATCH_SECRET_FILE or SWARMWATCH_SECRET before
   `swarmwatch db upgrade`); without it nothing is changed.
2. Peers gain prev_sources and prev_vantages (what their latest upsert found), so the
   writer adds a peer's record key to a source's (vantage's) rollup_activity row once,
   when it first reaches it (source_rk, vantage_rk, new here). Existing rows get each
   peer's key once per source and vantage it has, on the earliest row of its title and
   source (vantage): exact for the unfiltered sightings by source and vantage.
3. Rollup rows counted before 0007 hold 0 record-key sums for what they counted then,
   so their noise was a constant. The sighting rows from before 0007 (kept, read by
   nothing) say exactly which peers those counts were: their record keys are added, by
   the same grain as the writer then used (a peer's first sighting for places, cells
   and new peers; its first sighting in each hour and day for frames), in one streamed
   pass that holds a set of (peer, frame) pairs (about 100 bytes each). rollup_peer_times'
   sums are recounted from the peer rows, which define it.
4. publication_key: the key of the noise of published numbers that count no peer rows
   (sightings by reason, samples' peers returned; analysis.samplenoise).

Revision ID: 0010_i15c_privacy
Revises: 0009_i14_clients
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from h3.api import basic_int as h3i

from swarmwatch.config import get_settings
from swarmwatch.custody import CustodyError, read_secret

revision: str = "0010_i15c_privacy"
down_revision: str | None = "0009_i14_clients"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# swarmwatch.custody's store-secret wrap (version 1), written out: a migration must not
# change when the application code does (tests/test_custody.py checks the two agree).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def _kek(secret: bytes) -> tuple[bytes, str]:
    kek = hashlib.scrypt(secret, salt=b"swarmwatch deployment secret v1", **_SCRYPT)
    return kek, hashlib.blake2b(b"", key=kek, digest_size=8, person=b"sw-secret-id").hexdigest()


def _tag(kek: bytes, name: str, nonce: bytes, wrapped: bytes) -> bytes:
    message = name.encode() + nonce + wrapped
    return hashlib.blake2b(message, key=kek, digest_size=32, person=b"sw-store-tag").digest()


def _xor(kek: bytes, nonce: bytes, data: bytes) -> bytes:
    stream = hashlib.blake2b(nonce, key=kek, digest_size=len(data), person=b"sw-wrap-stream")
    return bytes(a ^ b for a, b in zip(data, stream.digest(), strict=True))


def _secret(action: str, count: int) -> tuple[bytes, str]:
    try:
        return _kek(read_secret(get_settings()))
    except CustodyError as exc:
        raise RuntimeError(
            f"migration 0010 {action} {count} store secret(s) (the replay digests' key) and "
            f"needs the deployment secret: {exc}"
        ) from None


def upgrade() -> None:
    _wrap_store_secrets()
    op.create_table(
        "publication_key",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("key", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publication_key")),
    )
    op.add_column(
        "peer", sa.Column("prev_sources", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "peer", sa.Column("prev_vantages", sa.BigInteger(), server_default="0", nullable=False)
    )
    for column in ("source_rk", "vantage_rk"):
        op.add_column(
            "rollup_activity",
            sa.Column(column, sa.BigInteger(), server_default="0", nullable=False),
        )
    conn = op.get_bind()
    _backfill_before_0007(conn)
    _backfill_sources_and_vantages(conn)
    conn.execute(
        sa.text(
            "UPDATE rollup_peer_times SET peers_rk = (SELECT COALESCE(SUM(p.record_key), 0)"
            " FROM peer p WHERE p.title_id = rollup_peer_times.title_id"
            " AND p.sightings = rollup_peer_times.times)"
        )
    )


# Written out rather than imported, as in 0007: the grain of the writer of then.
_SOURCE_BITS = {"tracker": 1, "dht": 2, "pex": 4, "swarm": 8, "replay": 16}
_OTHER_SOURCE = 32
_VANTAGE_BITS = 63
_CELL_RES = (2, 3, 4, 5, 6)  # every resolution a cell row may be kept at (rows that
_FRAME_RES = (3, 4, 5)  # do not exist are not touched)
_FRAME_INTERVALS = (3600, 86400)
#: table -> (key columns, record-key sum columns)
_LEGACY = {
    "rollup_place": (("title_id", "geoname_id", "country"), ("peers_rk", "seeds_rk")),
    "rollup_place_day": (
        ("title_id", "day", "vantage", "geoname_id", "country"),
        ("peers_rk", "seeds_rk"),
    ),
    "rollup_activity": (("title_id", "day", "source", "vantage"), ("new_peers_rk",)),
    "rollup_cell": (("title_id", "res", "h3_cell"), ("peers_rk",)),
    "rollup_cell_day": (("title_id", "day", "vantage", "res", "h3_cell"), ("peers_rk",)),
    "rollup_active": (("title_id", "interval_s", "bucket"), ("peers_rk", "city_peers_rk")),
    "rollup_frame_city": (("title_id", "interval_s", "bucket", "geoname_id"), ("peers_rk",)),
    "rollup_frame": (("title_id", "interval_s", "res", "bucket", "h3_cell"), ("peers_rk",)),
}


def _parents(cell: int | None, resolutions: tuple[int, ...]) -> list[tuple[int, int]]:
    if not cell:
        return []
    own = h3i.get_resolution(cell)
    return [(res, h3i.cell_to_parent(cell, res)) for res in resolutions if res <= own]


def _backfill_before_0007(conn: sa.Connection) -> None:
    """Add the record keys of what the rollups counted from sighting rows (see 3.)."""
    if conn.execute(sa.text("SELECT 1 FROM sighting LIMIT 1")).first() is None:
        return
    sighting = sa.table(
        "sighting",
        sa.column("id"),
        sa.column("title_id"),
        sa.column("peer_key"),
        sa.column("seen_at", sa.DateTime(timezone=True)),
        sa.column("source"),
        sa.column("vantage"),
        sa.column("seed", sa.Boolean()),
        sa.column("country"),
        sa.column("geoname_id"),
        sa.column("h3_cell"),
    )
    keys = {
        (int(t), bytes(pk)): int(rk)
        for t, pk, rk in conn.execute(
            sa.text(
                "SELECT title_id, peer_key, record_key FROM peer WHERE title_id IN"
                " (SELECT DISTINCT title_id FROM sighting)"
            )
        )
    }
    # [first, second] record-key sum per key (the second: seeds_rk, city_peers_rk)
    sums: dict[str, defaultdict[tuple[object, ...], list[int]]] = {
        table: defaultdict(lambda: [0, 0]) for table in _LEGACY
    }
    seen: set[tuple[int, bytes]] = set()
    present: set[tuple[int, bytes, int, int]] = set()
    # Streamed; what is held is a set of (peer, frame) pairs: about 100 bytes a pair.
    rows = conn.execute(
        sa.select(sighting).order_by(sighting.c.id).execution_options(yield_per=10_000)
    )
    for r in rows:
        peer = (int(r.title_id), bytes(r.peer_key))
        rk = keys.get(peer, 0)
        at = r.seen_at if r.seen_at.tzinfo else r.seen_at.replace(tzinfo=UTC)
        ts = at.timestamp()
        day = int(ts // 86400)
        geo, country = r.geoname_id or 0, r.country or ""
        if peer not in seen:  # new to its title: places, cells and new peers
            seen.add(peer)
            seed_rk = rk if r.seed is True else 0
            for table, key in (
                ("rollup_place", (peer[0], geo, country)),
                ("rollup_place_day", (peer[0], day, r.vantage, geo, country)),
            ):
                acc = sums[table][key]
                acc[0] += rk
                acc[1] += seed_rk
            sums["rollup_activity"][(peer[0], day, r.source, r.vantage)][0] += rk
            for res, parent in _parents(r.h3_cell, _CELL_RES):
                sums["rollup_cell"][(peer[0], res, parent)][0] += rk
                sums["rollup_cell_day"][(peer[0], day, r.vantage, res, parent)][0] += rk
        for interval in _FRAME_INTERVALS:  # its first sighting in each frame
            bucket = int(ts // interval)
            if (peer[0], peer[1], interval, bucket) in present:
                continue
            present.add((peer[0], peer[1], interval, bucket))
            acc = sums["rollup_active"][(peer[0], interval, bucket)]
            acc[0] += rk
            if r.geoname_id:
                acc[1] += rk
                sums["rollup_frame_city"][(peer[0], interval, bucket, r.geoname_id)][0] += rk
            for res, parent in _parents(r.h3_cell, _FRAME_RES):
                sums["rollup_frame"][(peer[0], interval, res, bucket, parent)][0] += rk
    for table, (key_cols, rk_cols) in _LEGACY.items():
        if not sums[table]:
            continue
        sets = ", ".join(f"{c} = {c} + :{c}" for c in rk_cols)
        where = " AND ".join(f"{c} = :{c}" for c in key_cols)
        conn.execute(
            sa.text(f"UPDATE {table} SET {sets} WHERE {where}"),
            [
                dict(zip(key_cols, key, strict=True))
                | dict(zip(rk_cols, add[: len(rk_cols)], strict=True))
                for key, add in sums[table].items()
            ],
        )


def _backfill_sources_and_vantages(conn: sa.Connection) -> None:
    """Each peer's record key once per source and vantage it has (see 2.)."""
    earliest: dict[tuple[str, int, str], tuple[int, str, str]] = {}
    for title_id, day, source, vantage in conn.execute(
        sa.text(
            "SELECT title_id, day, source, vantage FROM rollup_activity"
            " ORDER BY title_id, day, source, vantage"
        )
    ):
        earliest.setdefault(("source", int(title_id), str(source)), (int(day), source, vantage))
        earliest.setdefault(("vantage", int(title_id), str(vantage)), (int(day), source, vantage))
    ids = {str(n): int(i) for n, i in conn.execute(sa.text("SELECT name, id FROM vantage"))}
    update = (
        "UPDATE rollup_activity SET {col} = (SELECT COALESCE(SUM(p.record_key), 0)"
        " FROM peer p WHERE p.title_id = :title_id AND (p.{mask} & :bit) != 0)"
        " WHERE title_id = :title_id AND day = :day AND source = :source AND vantage = :vantage"
    )
    for (kind, title_id, name), (day, source, vantage) in earliest.items():
        if kind == "source":
            bit = _SOURCE_BITS.get(name, _OTHER_SOURCE)
        elif name in ids:
            bit = 1 << (min(ids[name], _VANTAGE_BITS) - 1)
        else:
            continue  # a vantage no peer has a bit for
        col, mask = ("source_rk", "sources") if kind == "source" else ("vantage_rk", "vantages")
        conn.execute(
            sa.text(update.format(col=col, mask=mask)),
            {"title_id": title_id, "day": day, "source": source, "vantage": vantage, "bit": bit},
        )


def _wrap_store_secrets() -> None:
    conn = op.get_bind()
    plain = conn.execute(sa.text("SELECT name, value FROM store_secret ORDER BY name")).all()
    # Ask for the secret before any change: without it nothing is altered.
    kek, secret_id = _secret("wraps", len(plain)) if plain else (b"", "")
    if plain:
        pinned = [r[0] for r in conn.execute(sa.text("SELECT secret_id FROM deployment_secret"))]
        if pinned and secret_id not in pinned:
            raise RuntimeError(
                f"migration 0010: this database's keys are wrapped with deployment secret "
                f"{', '.join(pinned)}, not with the configured one ({secret_id})"
            )
        if not pinned:
            conn.execute(
                sa.text("INSERT INTO deployment_secret (secret_id, pinned_at) VALUES (:s, :t)"),
                {"s": secret_id, "t": datetime.now(UTC)},
            )
    if conn.dialect.name == "sqlite":
        conn.execute(sa.text("PRAGMA secure_delete=ON"))  # the plain keys' pages are zeroed
    elif plain:
        log.warning(
            "0010: run VACUUM FULL store_secret once upgraded: PostgreSQL keeps the old row "
            "versions, with the plain key, until then"
        )
    with op.batch_alter_table("store_secret") as batch:
        batch.add_column(sa.Column("nonce", sa.LargeBinary(length=16), nullable=True))
        batch.add_column(sa.Column("wrapped_key", sa.LargeBinary(length=64), nullable=True))
        batch.add_column(sa.Column("tag", sa.LargeBinary(length=32), nullable=True))
        batch.add_column(sa.Column("secret_id", sa.String(length=16), nullable=True))
    update = sa.text(
        "UPDATE store_secret SET nonce = :nonce, wrapped_key = :wrapped, tag = :tag,"
        " secret_id = :secret_id, value = :zeros WHERE name = :name"
    )
    for name, value in plain:
        nonce = secrets.token_bytes(16)
        wrapped = _xor(kek, nonce, bytes(value))
        conn.execute(
            update,
            {
                "nonce": nonce,
                "wrapped": wrapped,
                "tag": _tag(kek, str(name), nonce, wrapped),
                "secret_id": secret_id,
                "zeros": bytes(len(value)),
                "name": name,
            },
        )
    # store_secret is a leaf table: rebuilding it on SQLite (batch mode) touches nothing else.
    with op.batch_alter_table("store_secret") as batch:
        batch.drop_column("value")
        batch.alter_column("nonce", existing_type=sa.LargeBinary(length=16), nullable=False)
        batch.alter_column("wrapped_key", existing_type=sa.LargeBinary(length=64), nullable=False)
        batch.alter_column("tag", existing_type=sa.LargeBinary(length=32), nullable=False)
        batch.alter_column("secret_id", existing_type=sa.String(length=16), nullable=False)


def downgrade() -> None:
    # The record-key sums added stay: they are what the rollups should have held.
    op.drop_table("publication_key")
    with op.batch_alter_table("rollup_activity") as batch:
        batch.drop_column("vantage_rk")
        batch.drop_column("source_rk")
    with op.batch_alter_table("peer") as batch:
        batch.drop_column("prev_vantages")
        batch.drop_column("prev_sources")
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT name, nonce, wrapped_key, tag FROM store_secret ORDER BY name")
    ).all()
    kek = _secret("unwraps", len(rows))[0] if rows else b""
    with op.batch_alter_table("store_secret") as batch:
        batch.add_column(sa.Column("value", sa.LargeBinary(length=64), nullable=True))
    for name, nonce, wrapped, tag in rows:
        if not secrets.compare_digest(_tag(kek, str(name), bytes(nonce), bytes(wrapped)), tag):
            raise RuntimeError(f"store secret {name} is not wrapped with the configured secret")
        conn.execute(
            sa.text("UPDATE store_secret SET value = :value WHERE name = :name"),
            {"value": _xor(kek, bytes(nonce), bytes(wrapped)), "name": name},
        )
    with op.batch_alter_table("store_secret") as batch:
        batch.drop_column("nonce")
        batch.drop_column("wrapped_key")
        batch.drop_column("tag")
        batch.drop_column("secret_id")
        batch.alter_column("value", existing_type=sa.LargeBinary(length=64), nullable=False)
