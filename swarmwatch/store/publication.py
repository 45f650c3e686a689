"""The database's publication key: the store makes it, analysis only reads it.

It keys the noise of published numbers that count no peer rows
(swarmwatch.analysis.samplenoise). Made once, when the schema is brought up to date,
so that no read ever writes.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, insert, select

from swarmwatch.store.models import PublicationKey

PUBLICATION_KEY_BYTES = 32


def ensure_publication_key(engine: Engine) -> None:
    """Make the publication key if this database has none (idempotent)."""
    with engine.begin() as conn:
        if conn.execute(select(PublicationKey.id).where(PublicationKey.id == 1)).first() is None:
            conn.execute(
                insert(PublicationKey).values(id=1, key=secrets.token_bytes(PUBLICATION_KEY_BYTES))
            )


__all__ = ["PUBLICATION_KEY_BYTES", "ensure_publication_key"]
