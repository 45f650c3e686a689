"""key custody and ownership: study keys wrapped by the deployment secret; owners, grants, admins.

Existing study keys are wrapped in place (their peer keys stay valid), so this
migration needs the deployment secret when any exist: set SWARMWATCH_SECRET_FILE
(or SWARMWATCH_SECRET) before `swarmwatch db upgrade`. Without one it stops before
changing anything and says so. A database with no study keys needs no secret.
Existing studies get no owner (admin keys manage them, or `swarmwatch study owner`).

Revision ID: 0006_i15
Revises: 0005
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from swarmwatch.config import get_settings
from swarmwatch.custody import CustodyError, read_secret

revision: str = "0006_i15"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Version 1 of swarmwatch.custody's wrap, written out: a migration must not change when
# the application code does (tests/test_custody.py checks the application unwraps it).
log = logging.getLogger("alembic.runtime.migration")

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def _kek(secret: bytes) -> tuple[bytes, str]:
    kek = hashlib.scrypt(secret, salt=b"swarmwatch deployment secret v1", **_SCRYPT)
    return kek, hashlib.blake2b(b"", key=kek, digest_size=8, person=b"sw-secret-id").hexdigest()


def _wrap(kek: bytes, study_id: int, key: bytes) -> tuple[bytes, bytes, bytes]:
    nonce = secrets.token_bytes(16)
    stream = hashlib.blake2b(nonce, key=kek, digest_size=len(key), person=b"sw-wrap-stream")
    wrapped = bytes(a ^ b for a, b in zip(key, stream.digest(), strict=True))
    message = study_id.to_bytes(8, "big") + nonce + wrapped
    tag = hashlib.blake2b(message, key=kek, digest_size=32, person=b"sw-wrap-tag").digest()
    return nonce, wrapped, tag


def _unwrap(kek: bytes, study_id: int, nonce: bytes, wrapped: bytes, tag: bytes) -> bytes:
    message = study_id.to_bytes(8, "big") + nonce + wrapped
    expected = hashlib.blake2b(message, key=kek, digest_size=32, person=b"sw-wrap-tag").digest()
    if not secrets.compare_digest(expected, tag):
        raise RuntimeError(f"study {study_id}'s key is not wrapped with the configured secret")
    stream = hashlib.blake2b(nonce, key=kek, digest_size=len(wrapped), person=b"sw-wrap-stream")
    return bytes(a ^ b for a, b in zip(wrapped, stream.digest(), strict=True))


def _secret(action: str, count: int) -> bytes:
    try:
        return read_secret(get_settings())
    except CustodyError as exc:
        raise RuntimeError(
            f"migration 0006 {action} {count} existing study key(s) and needs the deployment "
            f"secret: {exc}"
        ) from None


def upgrade() -> None:
    conn = op.get_bind()
    plain = conn.execute(sa.text("SELECT study_id, key FROM study_key ORDER BY study_id")).all()
    # Ask for the secret before any change: without it nothing is altered.
    kek, secret_id = _kek(_secret("wraps", len(plain))) if plain else (b"", "")
    if conn.dialect.name == "sqlite":
        # Freed pages are zeroed, so the plaintext keys do not linger in the file.
        conn.execute(sa.text("PRAGMA secure_delete=ON"))
    elif plain:
        log.warning(
            "0006: run VACUUM FULL study_key once upgraded: PostgreSQL keeps the old row "
            "versions, with the plaintext keys, until then"
        )

    op.create_table(
        "deployment_secret",
        sa.Column("secret_id", sa.String(length=16), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("secret_id", name=op.f("pk_deployment_secret")),
    )
    with op.batch_alter_table("study_key") as batch:
        batch.add_column(sa.Column("nonce", sa.LargeBinary(length=16), nullable=True))
        batch.add_column(sa.Column("wrapped_key", sa.LargeBinary(length=64), nullable=True))
        batch.add_column(sa.Column("tag", sa.LargeBinary(length=32), nullable=True))
        batch.add_column(sa.Column("secret_id", sa.String(length=16), nullable=True))
    update = sa.text(
        "UPDATE study_key SET nonce = :nonce, wrapped_key = :wrapped, tag = :tag,"
        " secret_id = :secret_id, key = :zeros WHERE study_id = :study_id"
    )
    for study_id, key in plain:
        nonce, wrapped, tag = _wrap(kek, int(study_id), bytes(key))
        conn.execute(
            update,
            {
                "nonce": nonce,
                "wrapped": wrapped,
                "tag": tag,
                "secret_id": secret_id,
                "study_id": study_id,
                "zeros": bytes(len(key)),
            },
        )
    if plain:
        conn.execute(
            sa.text("INSERT INTO deployment_secret (secret_id, pinned_at) VALUES (:s, :t)"),
            {"s": secret_id, "t": datetime.now(UTC)},
        )
    # study_key is a leaf table: rebuilding it on SQLite (batch mode) touches nothing else.
    with op.batch_alter_table("study_key") as batch:
        batch.drop_column("key")
        batch.alter_column("nonce", existing_type=sa.LargeBinary(length=16), nullable=False)
        batch.alter_column("wrapped_key", existing_type=sa.LargeBinary(length=64), nullable=False)
        batch.alter_column("tag", existing_type=sa.LargeBinary(length=32), nullable=False)
        batch.alter_column("secret_id", existing_type=sa.String(length=16), nullable=False)

    # Plain ADD COLUMN, never a batch rebuild of study or api_key: on SQLite dropping the
    # old study table would cascade-delete every title, torrent and peer.
    op.add_column(
        "api_key", sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    if conn.dialect.name == "sqlite":  # SQLite cannot ALTER a constraint in; inline it
        op.execute(
            "ALTER TABLE study ADD COLUMN owner_key_id INTEGER CONSTRAINT "
            "fk_study_owner_key_id_api_key REFERENCES api_key (id)"
        )
    else:
        op.add_column("study", sa.Column("owner_key_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_study_owner_key_id_api_key"),
            "study",
            "api_key",
            ["owner_key_id"],
            ["id"],
        )
    op.create_index(op.f("ix_study_owner_key_id"), "study", ["owner_key_id"])
    op.create_table(
        "study_grant",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_key.id"],
            name=op.f("fk_study_grant_api_key_id_api_key"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
            name=op.f("fk_study_grant_study_id_study"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", "api_key_id", name=op.f("pk_study_grant")),
    )
    op.create_index(op.f("ix_study_grant_api_key_id"), "study_grant", ["api_key_id"])


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT study_id, nonce, wrapped_key, tag FROM study_key ORDER BY study_id")
    ).all()
    kek = _kek(_secret("unwraps", len(rows)))[0] if rows else b""
    op.drop_index(op.f("ix_study_grant_api_key_id"), table_name="study_grant")
    op.drop_table("study_grant")
    op.drop_index(op.f("ix_study_owner_key_id"), table_name="study")
    if conn.dialect.name == "postgresql":
        op.drop_constraint(op.f("fk_study_owner_key_id_api_key"), "study", type_="foreignkey")
    op.drop_column("study", "owner_key_id")
    op.drop_column("api_key", "admin")
    with op.batch_alter_table("study_key") as batch:
        batch.add_column(sa.Column("key", sa.LargeBinary(length=64), nullable=True))
    for study_id, nonce, wrapped, tag in rows:
        key = _unwrap(kek, int(study_id), bytes(nonce), bytes(wrapped), bytes(tag))
        conn.execute(
            sa.text("UPDATE study_key SET key = :key WHERE study_id = :study_id"),
            {"key": key, "study_id": study_id},
        )
    with op.batch_alter_table("study_key") as batch:
        batch.drop_column("nonce")
        batch.drop_column("wrapped_key")
        batch.drop_column("tag")
        batch.drop_column("secret_id")
        batch.alter_column("key", existing_type=sa.LargeBinary(length=64), nullable=False)
    op.drop_table("deployment_secret")
