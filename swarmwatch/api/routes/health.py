"""Operations: /healthz (database reachable, crawlers alive) and /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from swarmwatch import __version__
from swarmwatch.api.deps import AdminKeyDep, DatabaseDep
from swarmwatch.metrics import CONTENT_TYPE, ServiceMetrics

router = APIRouter(tags=["operations"])


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE.split(";")[0]: {}}, "description": "Prometheus text"},
        401: {"description": "no API key", "content": _ERROR},
        403: {"description": "not an admin key (or an invalid one)", "content": _ERROR},
    },
)
def metrics(request: Request, _admin: AdminKeyDep) -> Response:
    """Prometheus text, for admin keys only: the figures are this process's over every
    study, private ones included, exact and unperturbed (sightings, new peers, swarm
    rounds' peers), so no one who may not read every study may read them."""
    service_metrics: ServiceMetrics = request.app.state.metrics
    return Response(service_metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/healthz")
def healthz(db: DatabaseDep, request: Request) -> Any:
    """200 when the database answers and (if this process crawls) the crawlers run."""
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        return JSONResponse(
            status_code=503,
            content={"status": "error", "database": f"unreachable: {type(exc).__name__}"},
        )
    crawl = getattr(request.app.state, "crawl_status", None)
    body: dict[str, Any] = {
        "status": "ok",
        "database": db.engine.dialect.name,
        "version": __version__,
    }
    if crawl is not None:
        body["crawlers"] = crawl()
        if not body["crawlers"].get("alive", False):
            body["status"] = "error"
            return JSONResponse(status_code=503, content=body)
    return body
