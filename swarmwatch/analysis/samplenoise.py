"""Cell keys for published numbers that are not counts of peer rows: sightings by
reason, and what trackers and swarm rounds returned per sample.

Such numbers have no record keys to sum, so their cell key is a keyed hash of what the
number is (its identity), under the database's publication key: fixed for the same
number, so asking again cannot average the noise away, and unknown to API readers, so
they cannot tell which noise a value carries. The key is kept in the database, which
the API must read: whoever holds a copy of the database holds the exact numbers anyway.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import Connection, insert, select

from swarmwatch.analysis import cellkey
from swarmwatch.store.models import PublicationKey

PUBLICATION_KEY_BYTES = 32
_PERSON = b"sw-sample-noise"


def publication_key(conn: Connection) -> bytes:
    """The database's publication key, made (in a short transaction of its own) on first use."""
    key = conn.execute(select(PublicationKey.key).where(PublicationKey.id == 1)).scalar()
    if key is None:
        with conn.engine.begin() as own:
            exists = own.execute(select(PublicationKey.id).where(PublicationKey.id == 1)).first()
            if exists is None:
                own.execute(
                    insert(PublicationKey).values(
                        id=1, key=secrets.token_bytes(PUBLICATION_KEY_BYTES)
                    )
                )
        with conn.engine.connect() as own:
            key = own.execute(select(PublicationKey.key).where(PublicationKey.id == 1)).scalar_one()
    return bytes(key)


def identity_key(key: bytes, *identity: str | int) -> int:
    """The cell key of the number `identity` names, in [0, RECORD_KEY_MODULUS)."""
    message = "\x1f".join(str(part) for part in identity).encode()
    digest = hashlib.blake2b(message, key=key, digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % cellkey.RECORD_KEY_MODULUS


def publish_count(key: bytes, n: int, k: int, *identity: str | int) -> int | None:
    """n as a non-owner sees it: withheld below k, else perturbed as cellkey.publish does,
    with the noise of the number `identity` names."""
    return cellkey.publish(n, identity_key(key, *identity), k)


__all__ = ["PUBLICATION_KEY_BYTES", "identity_key", "publication_key", "publish_count"]
