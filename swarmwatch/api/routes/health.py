"""Liveness and readiness: /healthz answers whether the database is reachable."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from swarmwatch import __version__
from swarmwatch.api.deps import DatabaseDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(db: DatabaseDep) -> Any:
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        return JSONResponse(
            status_code=503,
            content={"status": "error", "database": f"unreachable: {type(exc).__name__}"},
        )
    return {"status": "ok", "database": db.engine.dialect.name, "version": __version__}
