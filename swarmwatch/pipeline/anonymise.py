"""Anonymisation: per-study secret keys, keyed peer hashes, and sealing a study.

peer_key = BLAKE2b-128 of the packed address, keyed with the study's 256-bit secret:
exact unique counts inside a study, unlinkable across studies, and irreversible
once `study seal` deletes the key (DESIGN.md, privacy model).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from swarmwatch.store.models import Study, StudyKey, utcnow

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


def ensure_study_key(session: Session, study_id: int) -> bytes:
    """The study's secret, created now if it has none. Call when a study is created.

    Raises StudyError for an unknown study and StudySealed for a sealed one (a
    sealed study must never get a new key: old and new peer keys could not be
    told apart from two different people).
    """
    study = session.get(Study, study_id)
    if study is None:
        raise StudyError(f"no study {study_id}")
    if study.sealed_at is not None:
        raise StudySealed(f"study {study_id} is sealed")
    row = session.get(StudyKey, study_id)
    if row is None:
        row = StudyKey(study_id=study_id, key=secrets.token_bytes(STUDY_KEY_BYTES))
        session.add(row)
        session.flush()
    return row.key


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
    session.execute(delete(StudyKey).where(StudyKey.study_id == study_id))
    if study.sealed_at is not None:
        return SealResult(study_id, study.sealed_at, already_sealed=True)
    study.sealed_at = now or utcnow()
    session.flush()
    log.info("study %d sealed: its key is destroyed", study_id)
    return SealResult(study_id, study.sealed_at, already_sealed=False)


def active_study_keys(session: Session) -> dict[int, bytes]:
    """Keys of every unsealed study, creating any that are missing."""
    rows = session.execute(
        select(StudyKey.study_id, StudyKey.key)
        .join(Study, Study.id == StudyKey.study_id)
        .where(Study.sealed_at.is_(None))
    )
    keys = {study_id: key for study_id, key in rows}
    unsealed = session.scalars(select(Study.id).where(Study.sealed_at.is_(None))).all()
    for study_id in (s for s in unsealed if s not in keys):
        keys[study_id] = ensure_study_key(session, study_id)
    return keys


__all__ = [
    "PEER_KEY_BYTES",
    "STUDY_KEY_BYTES",
    "SealResult",
    "StudyError",
    "StudySealed",
    "active_study_keys",
    "ensure_study_key",
    "peer_key",
    "seal_study",
]
