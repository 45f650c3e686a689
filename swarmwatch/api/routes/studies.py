"""Studies: create, list, show. A study groups the titles and torrents of one question."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from swarmwatch import registry
from swarmwatch.api.deps import ApiKeyDep, OptionalKeyDep, ReadableStudyDep, SessionDep, SettingsDep
from swarmwatch.api.schemas import Page, StudyCreate, StudyPublic
from swarmwatch.store.models import Study

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


@router.post("", status_code=201, response_model=StudyPublic)
def create_study(
    body: StudyCreate, session: SessionDep, settings: SettingsDep, _key: ApiKeyDep
) -> Study:
    try:
        return registry.create_study(
            session,
            body.name,
            description=body.description,
            k_threshold=body.k_threshold or settings.k_threshold_default,
            private=body.private,
            titles=body.titles,
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
    """Public studies, and private ones too for a caller with an API key."""
    where = [] if key is not None else [Study.private.is_(False)]
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
