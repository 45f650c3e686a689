"""privacy leftovers: the replay digests' key under custody.

store_secret's values (the key of replay_progress's digests) were stored in plain,
beside the data they protect: they are wrapped in place with the deployment secret,
as 0006 wrapped the study keys, so existing replay marks stay valid. This needs the
secret when any exist (set SWARMWATCH_SECRET_FILE or SWARMWATCH_SECRET before
`swarmwatch db upgrade`); without it nothing is changed.

Revision ID: 0010_i15c_privacy
Revises: 0009_i14_clients
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
