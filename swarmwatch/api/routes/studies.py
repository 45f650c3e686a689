"""Studies: create, list, show, and their grants. A study groups the titles and torrents of
one question and belongs to the key that created it (swarmwatch.access)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from swarmwatch import access, registry
from swarmwatch.access import readable_studies
from swarmwatch.api.deps import (
    ApiKeyDep,
    OptionalKeyDep,
    OwnedStudyDep,
    ReadableStudyDep,
    SessionDep,
    SettingsDep,
)
from swarmwatch.api.schemas import GrantCreate, GrantPublic, Page, StudyCreate, StudyPublic
from swarmwatch.store.models import ApiKey, Study, StudyGrant

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


@router.post("", status_code=201, response_model=StudyPublic)
def create_study(
    body: StudyCreate, session: SessionDep, settings: SettingsDep, key: ApiKeyDep
) -> Study:
    """A new study, owned by the calling key (which may then grant others read or write)."""
    try:
        return registry.create_study(
            session,
            body.name,
            description=body.description,
            k_threshold=body.k_threshold or settings.k_threshold_default,
            private=body.private,
            titles=body.titles,
            owner_key_id=key.id,
        )
    except registry.DuplicateStudy as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None


@router.get("", response_model=Page[StudyPublic])
def list_studies(
    session: SessionDep,
    key: OptionalKeyDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, object]:
    """Public studies, and the private ones the caller owns or was granted (admin: all)."""
    where = [readable_studies(key)]
    total = session.scalar(select(func.count(Study.id)).where(*where)) or 0
    items = session.scalars(
        select(Study)
        .where(*where)
        .options(selectinload(Study.titles))
        .order_by(Study.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{study_id}", response_model=StudyPublic)
def get_study(study: ReadableStudyDep) -> Study:
    return study


@router.get("/{study_id}/grants", response_model=list[GrantPublic], tags=["access"])
def list_grants(study: OwnedStudyDep, session: SessionDep) -> list[GrantPublic]:
    """The keys the owner granted read or write (owner and admin keys only)."""
    return [_grant_public(session, g) for g in access.grants_of(session, study)]


@router.post("/{study_id}/grants", status_code=201, response_model=GrantPublic, tags=["access"])
def create_grant(body: GrantCreate, study: OwnedStudyDep, session: SessionDep) -> GrantPublic:
    """Give another API key (by id: its holder finds it at /api/v1/keys/me) read or write."""
    try:
        row = access.grant(session, study, body.api_key_id, body.role)
    except access.AccessError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return _grant_public(session, row)


@router.delete(
    "/{study_id}/grants/{api_key_id}", status_code=204, response_class=Response, tags=["access"]
)
def delete_grant(
    study: OwnedStudyDep,
    session: SessionDep,
    api_key_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
) -> Response:
    """Take a key's grant away; its next request is refused."""
    try:
        access.ungrant(session, study, api_key_id)
    except access.AccessError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    return Response(status_code=204)


def _grant_public(session: Session, row: StudyGrant) -> GrantPublic:
    key = session.get(ApiKey, row.api_key_id)
    return GrantPublic(
        api_key_id=row.api_key_id,
        name=key.name if key else "",
        role=row.role,
        granted_at=row.granted_at,
    )
