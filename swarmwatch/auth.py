"""API keys: made by `swarmwatch apikey create`, shown once, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from swarmwatch.store.models import ApiKey

#: Printed keys start with this, so a leaked one is recognisable in a scan.
KEY_PREFIX = "sw_"


def hash_key(key: str) -> str:
    # Keys are 256-bit random: a plain SHA-256 is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str) -> str:
    """Store a new key's hash; return the key itself, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, key_hash=hash_key(key), prefix=key[:10]))
    session.flush()
    return key


def verify_api_key(session: Session, key: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row
