"""The database's publication key: the store makes it, analysis only reads it.

It keys the noise of published numbers that count no peer rows
(swarmwatch.analysis.samplenoise). Made once, when the schema is brought up to date,
so that no read ever writes.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from swarmwatch.store.models import PublicationKey

PUBLICATION_KEY_BYTES = 32


def ensure_publication_key(engine: Engine) -> None:
    """Make the publication key if this database has none (idempotent).

    Workers started together all upgrade: the one whose insert loses the race finds
    the key another made, which is as good as its own.
    """
    try:
        with engine.begin() as conn:
            if conn.execute(select(PublicationKey.id).where(PublicationKey.id == 1)).first():
                return
            key = secrets.token_bytes(PUBLICATION_KEY_BYTES)
            conn.execute(insert(PublicationKey).values(id=1, key=key))
    except IntegrityError:
        with engine.connect() as conn:
            if conn.execute(select(PublicationKey.id).where(PublicationKey.id == 1)).first():
                return
        raise


__all__ = ["PUBLICATION_KEY_BYTES", "ensure_publication_key"]
