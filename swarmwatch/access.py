"""Who may do what with a study: owners, grants, admin keys (DESIGN.md, ownership).

A study belongs to the key that created it. Its owner grants other keys read or
write; admin keys (CLI-made) may do everything. Anyone may read a public study;
a private one is unknown (404) to a caller who may not read it, so its existence
does not leak. The API's dependencies and the CLI both decide through role_of().
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from swarmwatch.store.models import ApiKey, Study, StudyGrant, utcnow


class Role(enum.IntEnum):
    """A caller's rights on one study; each includes the ones below it."""

    NONE = 0
    READ = 1  # read a private study
    WRITE = 2  # register and delete its torrents
    OWNER = 3  # grant and revoke others' rights
    ADMIN = 4  # every study, made only with `swarmwatch apikey create --admin`


#: The roles an owner may grant (owner and admin are never granted).
GRANTABLE = {"read": Role.READ, "write": Role.WRITE}


class AccessError(Exception):
    """A grant that cannot be made or removed (unknown key, bad role)."""


def role_of(session: Session, study: Study, key: ApiKey | None) -> Role:
    if key is None:
        return Role.NONE
    if key.admin:
        return Role.ADMIN
    if study.owner_key_id == key.id:
        return Role.OWNER
    grant = session.get(StudyGrant, (study.id, key.id))
    return GRANTABLE.get(grant.role, Role.NONE) if grant is not None else Role.NONE


def can_read(study: Study, role: Role) -> bool:
    return not study.private or role >= Role.READ


def readable_studies(key: ApiKey | None) -> Any:
    """A WHERE clause on Study: the studies `key` may read (for listings)."""
    public = Study.private.is_(False)
    if key is None:
        return public
    if key.admin:
        return Study.id.is_not(None)
    granted = select(StudyGrant.study_id).where(StudyGrant.api_key_id == key.id)
    return or_(public, Study.owner_key_id == key.id, Study.id.in_(granted))


def grant(session: Session, study: Study, key_id: int, role: str) -> StudyGrant:
    """Give key `key_id` read or write on `study` (replacing a grant it had)."""
    if role not in GRANTABLE:
        raise AccessError(f"role must be one of {', '.join(GRANTABLE)}, got {role!r}")
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        raise AccessError(f"no active API key {key_id}")
    if key.id == study.owner_key_id:
        raise AccessError(f"API key {key_id} owns study {study.id} already")
    row = session.get(StudyGrant, (study.id, key_id))
    if row is None:
        row = StudyGrant(study_id=study.id, api_key_id=key_id, role=role, granted_at=utcnow())
        session.add(row)
    else:
        row.role, row.granted_at = role, utcnow()
    session.flush()
    return row


def ungrant(session: Session, study: Study, key_id: int) -> None:
    """Remove key `key_id`'s grant on `study`; AccessError if it has none."""
    result = session.execute(
        delete(StudyGrant).where(StudyGrant.study_id == study.id, StudyGrant.api_key_id == key_id)
    )
    if not getattr(result, "rowcount", 0):
        raise AccessError(f"API key {key_id} has no grant on study {study.id}")


def grants_of(session: Session, study: Study) -> list[StudyGrant]:
    return list(
        session.scalars(
            select(StudyGrant)
            .where(StudyGrant.study_id == study.id)
            .order_by(StudyGrant.api_key_id)
        )
    )


def set_owner(session: Session, study: Study, key_id: int | None) -> None:
    """Make key `key_id` the study's owner (None: admin keys only); its grant is dropped."""
    if key_id is not None:
        key = session.get(ApiKey, key_id)
        if key is None or key.revoked_at is not None:
            raise AccessError(f"no active API key {key_id}")
        session.execute(
            delete(StudyGrant).where(
                StudyGrant.study_id == study.id, StudyGrant.api_key_id == key_id
            )
        )
    study.owner_key_id = key_id
    session.flush()


__all__ = [
    "GRANTABLE",
    "AccessError",
    "Role",
    "can_read",
    "grant",
    "grants_of",
    "readable_studies",
    "role_of",
    "set_owner",
    "ungrant",
]
