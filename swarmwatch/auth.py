"""API keys: made by `swarmwatch apikey create`, shown once, stored as SHA-256 only.

Keys are revoked, never deleted: a revoked key authenticates nothing, and the
studies it owns stay recorded as its own (admin keys still manage them).
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from swarmwatch.store.models import ApiKey, utcnow

#: Printed keys start with this, so a leaked one is recognisable in a scan.
KEY_PREFIX = "sw_"


class ApiKeyError(Exception):
    """No such API key (or it is revoked already)."""


def hash_key(key: str) -> str:
    # Keys are 256-bit random: a plain SHA-256 is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str, *, admin: bool = False) -> str:
    """Store a new key's hash; return the key itself, which is never stored.

    Admin keys are made here only (the CLI), never through the API.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, key_hash=hash_key(key), prefix=key[:10], admin=admin))
    session.flush()
    return key


def verify_api_key(session: Session, key: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    """Revoke a key for good; ApiKeyError if unknown or already revoked."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise ApiKeyError(f"no API key {key_id}")
    if row.revoked_at is not None:
        raise ApiKeyError(f"API key {key_id} was revoked already")
    row.revoked_at = utcnow()
    session.flush()
    return row


__all__ = [
    "KEY_PREFIX",
    "ApiKeyError",
    "create_api_key",
    "hash_key",
    "list_api_keys",
    "revoke_api_key",
    "verify_api_key",
]
