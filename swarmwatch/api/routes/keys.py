"""API keys: who am I. Keys are made, listed and revoked with the CLI only."""

from __future__ import annotations

from fastapi import APIRouter

from swarmwatch.api.deps import ApiKeyDep
from swarmwatch.api.schemas import ApiKeyPublic
from swarmwatch.store.models import ApiKey

router = APIRouter(prefix="/api/v1/keys", tags=["access"])


@router.get("/me", response_model=ApiKeyPublic)
def whoami(key: ApiKeyDep) -> ApiKey:
    """The calling key's id (to give to a study owner for a grant), name and kind."""
    return key
