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

from sqlalchemy import Connection, select

from swarmwatch.analysis import cellkey
from swarmwatch.store.models import PublicationKey

_PERSON = b"sw-sample-noise"


def publication_key(conn: Connection) -> bytes:
    """The database's publication key (made by Database.upgrade(); a read never writes)."""
    key = conn.execute(select(PublicationKey.key).where(PublicationKey.id == 1)).scalar()
    if key is None:
        raise RuntimeError("the database has no publication key: run `swarmwatch db upgrade`")
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


__all__ = ["identity_key", "publication_key", "publish_count"]
