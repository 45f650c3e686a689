"""Anonymisation: per-study secret keys, keyed peer hashes, and sealing a study.

peer_key = BLAKE2b-128 of the packed address, keyed with the study's 256-bit secret:
exact unique counts inside a study, unlinkable across studies, and irreversible
once `study seal` deletes the key (DESIGN.md, privacy model). Study keys are stored
only wrapped with the deployment secret (swarmwatch.custody): they are made, and
unwrapped, only by processes that hold it (crawlers, ingest), never by the API.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from swarmwatch.custody import KeyCustody, WrappedKey, WrongSecret
from swarmwatch.store.models import (
    DeploymentSecret,
    ReplayEdge,
    StoreSecret,
    Study,
    StudyKey,
    Torrent,
    utcnow,
)

log = logging.getLogger(__name__)

#: 256-bit study secrets: BLAKE2b takes keys up to 64 bytes; 32 is plenty.
STUDY_KEY_BYTES = 32
#: 128-bit peer keys: collisions among a million peers have probability ~1e-27.
PEER_KEY_BYTES = 16
#: Domain separation, so a study key hashes nothing else to the same value.
_PERSON = b"swarmwatch-peer"


class StudyError(Exception):
    """A study operation that cannot be done (unknown study, or sealed)."""


class StudySealed(StudyError):
    """The study is sealed: its key is gone and it accepts no new sightings."""


def peer_key(study_key: bytes, packed_address: bytes) -> bytes:
    """The anonymous key of one address in one study."""
    return hashlib.blake2b(
        packed_address, key=study_key, digest_size=PEER_KEY_BYTES, person=_PERSON
    ).digest()


def check_custody(session: Session, custody: KeyCustody) -> None:
    """Refuse a secret that is not this database's; pin it if the database has none yet.

    Raises WrongSecret. The first process with a secret pins its id, so two workers
    started with different secrets cannot each wrap keys the other cannot read.
    """
    pinned = session.scalars(select(DeploymentSecret.secret_id)).all()
    if not pinned:
        try:
            with session.begin_nested():
                session.add(DeploymentSecret(secret_id=custody.secret_id, pinned_at=utcnow()))
        except IntegrityError:  # another worker pinned the same secret at the same moment
            pass
        pinned = session.scalars(select(DeploymentSecret.secret_id)).all()
    if custody.secret_id not in pinned:
        raise WrongSecret(
            f"this database's study keys are wrapped with deployment secret "
            f"{', '.join(pinned)}, not with the configured one ({custody.secret_id}): "
            "set SWARMWATCH_SECRET_FILE to the secret the other workers use"
        )


def _stored(row: StudyKey) -> WrappedKey:
    return WrappedKey(row.nonce, row.wrapped_key, row.tag, row.secret_id)


#: The store secret that keys replay digests (pipeline.replay).
REPLAY_SECRET = "replay"


def stored_secret(row: StoreSecret) -> WrappedKey:
    """A store secret's row as custody unwraps it."""
    return WrappedKey(bytes(row.nonce), bytes(row.wrapped_key), bytes(row.tag), row.secret_id)


def ensure_study_key(session: Session, study_id: int, custody: KeyCustody) -> bytes:
    """The study's secret, created (and stored wrapped) now if it has none.

    Raises StudyError for an unknown study, StudySealed for a sealed one (a sealed
    study must never get a new key: old and new peer keys could not be told apart
    from two different people) and WrongSecret if its key is not ours to unwrap.
    """
    study = session.get(Study, study_id)
    if study is None:
        raise StudyError(f"no study {study_id}")
    if study.sealed_at is not None:
        raise StudySealed(f"study {study_id} is sealed")
    row = session.get(StudyKey, study_id)
    if row is not None:
        return custody.unwrap(study_id, _stored(row))
    key = secrets.token_bytes(STUDY_KEY_BYTES)
    wrapped = custody.wrap(study_id, key)
    try:
        with session.begin_nested():
            session.add(
                StudyKey(
                    study_id=study_id,
                    nonce=wrapped.nonce,
                    wrapped_key=wrapped.wrapped,
                    tag=wrapped.tag,
                    secret_id=wrapped.secret_id,
                )
            )
    except IntegrityError:  # another worker made it first: use theirs
        row = session.get(StudyKey, study_id, populate_existing=True)
        if row is None:
            raise
        return custody.unwrap(study_id, _stored(row))
    return key


def rewrap_keys(session: Session, old: KeyCustody, new: KeyCustody) -> int:
    """Wrap every study key (and the store's own secrets) again under a new deployment
    secret; the count of study keys rewrapped.

    Peer keys do not change. Afterwards the old secret opens nothing in this database,
    and the new one opens nothing in backups made before: destroy the old secret and a
    study sealed before the rotation cannot be linked again even from an old backup.
    """
    check_custody(session, old)
    rows = session.scalars(select(StudyKey).order_by(StudyKey.study_id)).all()
    for row in rows:
        wrapped = new.wrap(row.study_id, old.unwrap(row.study_id, _stored(row)))
        row.nonce, row.wrapped_key, row.tag = wrapped.nonce, wrapped.wrapped, wrapped.tag
        row.secret_id = wrapped.secret_id
    for secret in session.scalars(select(StoreSecret).order_by(StoreSecret.name)).all():
        plain = old.unwrap_store_secret(secret.name, stored_secret(secret))
        wrapped = new.wrap_store_secret(secret.name, plain)
        secret.nonce, secret.wrapped_key, secret.tag = wrapped.nonce, wrapped.wrapped, wrapped.tag
        secret.secret_id = wrapped.secret_id
    session.execute(delete(DeploymentSecret))
    session.add(DeploymentSecret(secret_id=new.secret_id, pinned_at=utcnow()))
    session.flush()
    log.info("study keys rewrapped under deployment secret %s: %d", new.secret_id, len(rows))
    return len(rows)


@dataclass(frozen=True, slots=True)
class SealResult:
    study_id: int
    sealed_at: datetime
    already_sealed: bool


def seal_study(session: Session, study_id: int, *, now: datetime | None = None) -> SealResult:
    """Destroy the study's key and mark it sealed; idempotent.

    After this the stored peer keys can never be linked to an address again, and
    the pipeline drops (and counts) every new sighting for the study.
    """
    study = session.get(Study, study_id)
    if study is None:
        raise StudyError(f"no study {study_id}")
    if session.get_bind().dialect.name == "sqlite":
        # Freed pages are zeroed: the wrapped key must not survive in the file, where the
        # secret could still unwrap it. (PostgreSQL: old row versions last until VACUUM.)
        session.execute(text("PRAGMA secure_delete=ON"))
    row = session.get(StudyKey, study_id)
    if row is not None:  # overwritten in place first, then deleted
        row.nonce, row.wrapped_key = bytes(len(row.nonce)), bytes(len(row.wrapped_key))
        row.tag = bytes(len(row.tag))
        session.flush()
    session.execute(delete(StudyKey).where(StudyKey.study_id == study_id))
    _forget_replay_digests(session, study_id)
    if study.sealed_at is not None:
        return SealResult(study_id, study.sealed_at, already_sealed=True)
    study.sealed_at = now or utcnow()
    session.flush()
    log.info("study %d sealed: its key is destroyed", study_id)
    return SealResult(study_id, study.sealed_at, already_sealed=False)


def _forget_replay_digests(session: Session, study_id: int) -> None:
    """Delete the replay digests (store.coverage's edges) of the study's swarms that no
    unsealed study watches: keyed with the store's replay key, which the deployment
    secret unwraps, they would let its holder test a guessed address against a sealed
    study's swarms. Spans hold no digest and stay, so no file counts those minutes again."""

    def infohashes(*where: Any) -> set[str]:
        rows = session.execute(
            select(Torrent.infohash_v1, Torrent.infohash_v2)
            .join(Study, Study.id == Torrent.study_id)
            .where(*where)
        )
        return {ih.lower() for row in rows for ih in row if ih}

    sealed = infohashes(Torrent.study_id == study_id)
    watched = infohashes(Torrent.study_id != study_id, Study.sealed_at.is_(None))
    if sealed - watched:
        session.execute(delete(ReplayEdge).where(ReplayEdge.infohash.in_(sorted(sealed - watched))))


def active_study_keys(session: Session, custody: KeyCustody) -> dict[int, bytes]:
    """Keys of every unsealed study, unwrapped, creating any that are missing.

    Raises WrongSecret when the secret is not this database's (check_custody first).
    """
    check_custody(session, custody)
    rows = session.scalars(
        select(StudyKey).join(Study, Study.id == StudyKey.study_id).where(Study.sealed_at.is_(None))
    ).all()
    keys = {row.study_id: custody.unwrap(row.study_id, _stored(row)) for row in rows}
    unsealed = session.scalars(select(Study.id).where(Study.sealed_at.is_(None))).all()
    for study_id in (s for s in unsealed if s not in keys):
        keys[study_id] = ensure_study_key(session, study_id, custody)
    return keys


__all__ = [
    "PEER_KEY_BYTES",
    "REPLAY_SECRET",
    "STUDY_KEY_BYTES",
    "SealResult",
    "StudyError",
    "StudySealed",
    "active_study_keys",
    "check_custody",
    "ensure_study_key",
    "peer_key",
    "rewrap_keys",
    "seal_study",
    "stored_secret",
]
