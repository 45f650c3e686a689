"""FastAPI dependencies: the database, a session per request, API-key auth, study access.

Every route that touches a study decides through require_role (swarmwatch.access).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from swarmwatch.access import Role, can_read, role_of
from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.auth import verify_api_key
from swarmwatch.config import Settings
from swarmwatch.store import Database
from swarmwatch.store.models import ApiKey, Study

bearer = HTTPBearer(auto_error=False, description="API key from `swarmwatch apikey create`")


# The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency
# in the thread pool, and each such hop costs a thread switch and a GIL hand-over.


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.database
    return db


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_analysis_caches(request: Request) -> AnalysisCaches:
    caches: AnalysisCaches = request.app.state.analysis_caches
    return caches


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
#: The app's cached analysis answers (create_app makes them; nothing is process-global).
CachesDep = Annotated[AnalysisCaches, Depends(get_analysis_caches)]


def get_session(db: DatabaseDep) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    with db.session() as session:
        yield session


# scope="function": commit before the response is sent, so a client that reads
# right after a 201 sees the row, and a failed commit is an error response.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def optional_api_key(session: SessionDep, credentials: Credentials) -> ApiKey | None:
    """The caller's key if one was sent; a wrong key is 403 even where none is needed."""
    if credentials is None:
        return None
    key = verify_api_key(session, credentials.credentials)
    if key is None:
        raise HTTPException(status_code=403, detail="invalid or revoked API key")
    return key


OptionalKeyDep = Annotated[ApiKey | None, Depends(optional_api_key)]


def _no_key() -> HTTPException:
    return HTTPException(
        status_code=401,
        detail="this request needs 'Authorization: Bearer <api key>' "
        "(make one with `swarmwatch apikey create`)",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_api_key(key: OptionalKeyDep) -> ApiKey:
    if key is None:
        raise _no_key()
    return key


ApiKeyDep = Annotated[ApiKey, Depends(require_api_key)]


async def require_admin(key: ApiKeyDep) -> ApiKey:
    """An admin key (made with `swarmwatch apikey create --admin`): 403 for any other."""
    if not key.admin:
        raise HTTPException(status_code=403, detail="this request needs an admin API key")
    return key


AdminKeyDep = Annotated[ApiKey, Depends(require_admin)]


def api_key_apart(db: DatabaseDep, credentials: Credentials) -> ApiKey:
    """ApiKeyDep checked in a session of its own, closed before the handler runs.

    For handlers that open their own short write transaction: a request then never
    holds one pooled connection while it waits for another (or for the client's body).
    """
    with db.session() as session:
        key = optional_api_key(session, credentials)
    if key is None:
        raise _no_key()
    return key


ApiKeyApartDep = Annotated[ApiKey, Depends(api_key_apart)]


def require_role(session: Session, study_id: int, key: ApiKey | None, need: Role) -> Study:
    """The study if `key` holds `need` on it (swarmwatch.access), else the error to send.

    Unknown, or private and not readable by the caller: 404 (a private study's existence
    does not leak). Readable but not enough rights: 401 without a key, 403 with one.
    """
    study, role = _readable(session, study_id, key)
    if need > Role.READ and role < need:
        if key is None:
            raise _no_key()
        raise HTTPException(
            status_code=403,
            detail=f"this API key may not {_VERBS[need]} study {study.id}"
            + (" (ask its owner for a grant)" if need <= Role.WRITE else ""),
        )
    return study


_VERBS = {Role.READ: "read", Role.WRITE: "change", Role.OWNER: "manage the grants of"}

StudyIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


@dataclass(frozen=True, slots=True)
class StudyAccess:
    """The study named in the path and the caller's role on it, decided once per request."""

    study: Study
    role: Role


def study_access(study_id: StudyIdPath, session: SessionDep, key: OptionalKeyDep) -> StudyAccess:
    """The study and the caller's role: 404 if unknown or private to others.

    readable_study and exact_reader both depend on this, and FastAPI resolves a
    dependency once per request, so role_of runs once however many of them a route asks.
    """
    return StudyAccess(*_readable(session, study_id, key))


def _readable(session: Session, study_id: int, key: ApiKey | None) -> tuple[Study, Role]:
    """The study and the caller's role on it; 404 if unknown, or private and not theirs."""
    study = session.get(Study, study_id)
    if study is None:
        raise HTTPException(status_code=404, detail=f"study {study_id} not found")
    role = role_of(session, study, key)
    if not can_read(study, role):
        raise HTTPException(status_code=404, detail=f"study {study.id} not found")
    return study, role


StudyAccessDep = Annotated[StudyAccess, Depends(study_access)]


async def readable_study(access: StudyAccessDep) -> Study:
    """The study named in the path: 404 if unknown or private to others."""
    return access.study


def owned_study(study_id: StudyIdPath, session: SessionDep, key: ApiKeyDep) -> Study:
    """The study named in the path, if the caller owns it (or is an admin)."""
    return require_role(session, study_id, key, Role.OWNER)


async def exact_reader(access: StudyAccessDep) -> bool:
    """Whether the caller reads the study's exact counts: its owners and admins only;
    everyone else reads cell-key perturbed ones (analysis.cellkey)."""
    return access.role >= Role.OWNER


ReadableStudyDep = Annotated[Study, Depends(readable_study)]
ExactReaderDep = Annotated[bool, Depends(exact_reader)]
OwnedStudyDep = Annotated[Study, Depends(owned_study)]

__all__ = [
    "AdminKeyDep",
    "ApiKeyApartDep",
    "ApiKeyDep",
    "CachesDep",
    "DatabaseDep",
    "ExactReaderDep",
    "OptionalKeyDep",
    "OwnedStudyDep",
    "ReadableStudyDep",
    "SessionDep",
    "SettingsDep",
    "StudyAccess",
    "StudyAccessDep",
    "require_role",
]
