"""The web map: `/` serves web/index.html, `/web/...` its assets and plotly.js, all local.

Nothing here reads study data: the page gets its numbers from the public API
(k-suppressed there), and only asks this router for hexagon outlines by H3 id.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import h3
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from swarmwatch import shipped
from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.rankings import PLACE_BASE_RES, cell_population
from swarmwatch.api.costly import KeptAnswers, WorkBudget
from swarmwatch.api.deps import CachesDep, SessionDep
from swarmwatch.config import Settings
from swarmwatch.store.models import City

WEB_DIR = shipped("web")
#: Seconds an outline answer is reused: geometry never changes, populations only when
#: places are reloaded.
GEOMETRY_KEEP_SECONDS = 600.0
#: Largest outline request: 120 frames x 5,000 cells use one set; 50k covers res 5 over land.
MAX_GEOMETRY_CELLS = 50_000

#: Finest cell with an outline: the resolution places are binned at (cities' base cells).
MAX_GEOMETRY_RES = PLACE_BASE_RES

router = APIRouter(tags=["web"])

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}


@lru_cache(maxsize=1)
def plotly_bundle() -> tuple[bytes, bytes, str]:
    """plotly.js from the installed plotly package: (raw, gzipped, etag), built once.

    4.7 MB raw, ~1.4 MB gzipped: the biggest thing the page loads, so it is
    compressed once here rather than on every request.
    """
    from plotly.offline import get_plotlyjs

    raw = get_plotlyjs().encode()
    return raw, gzip.compress(raw, 6), '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def _static(path: Path) -> Response:
    return FileResponse(
        path,
        media_type=_TYPES.get(path.suffix, "application/octet-stream"),
        # The page is small and changes with the code: revalidate (ETag/Last-Modified).
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/", include_in_schema=False)
def index() -> Response:
    page = WEB_DIR / "index.html"
    if not page.is_file():  # an install without web/: say so rather than 404 at /
        return HTMLResponse("<h1>swarmwatch</h1><p>web/ is missing; the API is at /docs</p>")
    return _static(page)


@router.get("/web/plotly.min.js", include_in_schema=False)
def plotly_js(request: Request) -> Response:
    raw, packed, etag = plotly_bundle()
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type=_TYPES[".js"], headers=headers)
    return Response(raw, media_type=_TYPES[".js"], headers=headers)


@router.get("/web/{name:path}", include_in_schema=False)
def asset(name: str) -> Response:
    if "\x00" in name:  # no file name holds NUL, and os.stat raises on it
        raise HTTPException(status_code=404, detail="no such file")
    root = WEB_DIR.resolve()
    path = (root / name).resolve()
    # No way out of web/ (.., symlinks, absolute names) and only known file types.
    if not path.is_relative_to(root) or not path.is_file() or path.suffix not in _TYPES:
        raise HTTPException(status_code=404, detail=f"no such file: /web/{name}")
    return _static(path)


class CellOutlinesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cells: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{15,16}$")]],
        Field(max_length=MAX_GEOMETRY_CELLS, description="H3 cell ids (hex strings)"),
    ]
    cities: Annotated[
        list[Annotated[int, Field(ge=0, le=2**31 - 1)]],
        Field(max_length=MAX_GEOMETRY_CELLS, description="GeoNames ids whose population to add"),
    ] = []


class GeometryLimits:
    """What bounds the outline endpoint (no key needed): a per-client cell budget and
    whole answers kept for reuse. Owned by the app (app.state.geometry)."""

    def __init__(self, settings: Settings) -> None:
        self.budget = WorkBudget(
            settings.api_geometry_cells_rate, settings.api_geometry_cells_burst
        )
        self.answers = KeptAnswers(settings.api_geometry_cache_bytes, GEOMETRY_KEEP_SECONDS)


@router.post(
    "/api/v1/geometry/h3",
    response_class=JSONResponse,
    responses={429: {"description": "this client's cell budget is spent: retry after"}},
)
def cell_outlines(
    body: CellOutlinesRequest, session: SessionDep, caches: CachesDep, request: Request
) -> Response:
    """Hexagon outlines as GeoJSON for H3 cell ids, with each cell's population.

    No study data: outlines are geometry, ``properties.population`` is the sum
    of the GeoNames cities whose point lies in the cell (the per-capita
    denominator of the map, the same as cell rankings use), and ``city_population`` the
    GeoNames population of each requested city. The map asks once for every cell of a time-lapse
    and then only swaps values per frame. Rings are closed and wound clockwise
    (d3-geo's spherical convention, which plotly's geo traces use), and cells
    across the antimeridian keep continuous longitudes.
    """
    bad = [c for c in body.cells if not _valid_cell(c)]
    if bad:
        raise HTTPException(status_code=422, detail=f"not H3 cell ids: {bad[:5]}")
    cells = list(dict.fromkeys(c.lower() for c in body.cells))
    # Populations are summed from each city's res-7 cell up to its parents: a finer
    # cell has none to give, and the API never publishes one (see MAX_GEOMETRY_RES).
    fine = [c for c in cells if h3.get_resolution(c) > MAX_GEOMETRY_RES]
    if fine:
        raise HTTPException(
            status_code=422,
            detail=f"H3 cells finer than resolution {MAX_GEOMETRY_RES}: {fine[:5]}",
        )
    limits: GeometryLimits = request.app.state.geometry
    key = hashlib.sha256(json.dumps([sorted(cells), sorted(set(body.cities))]).encode()).digest()
    kept = limits.answers.get(key)
    if kept is None:
        client = request.client.host if request.client else "?"
        # At most the whole burst: a request larger than it must not wait forever.
        wait = limits.budget.charge(client, min(max(len(cells), 1), limits.budget.burst))
        if wait:
            raise HTTPException(
                status_code=429,
                detail=f"outline budget spent ({len(cells)} cells asked): retry in {wait:.0f} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        answer = _outlines_answer(session, cells, body.cities, caches)
        kept = json.dumps(answer, separators=(",", ":")).encode()
        limits.answers.put(key, kept)
    if "gzip" not in request.headers.get("accept-encoding", ""):
        return Response(kept, media_type="application/json")
    # Kept compressed too: gzip of 50,000 outlines (13 MB) costs more than reading them
    # from the cache, and the GZip middleware would redo it for every viewer.
    packed = limits.answers.get(key + b".gz")
    if packed is None:
        packed = gzip.compress(kept, 6)
        limits.answers.put(key + b".gz", packed)
    headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    return Response(packed, media_type="application/json", headers=headers)


def _outlines_answer(
    session: Session, cells: list[str], city_ids: list[int], caches: AnalysisCaches
) -> dict[str, Any]:
    features = outlines_with_population(session, cells, caches)
    # A foreign member (RFC 7946 §6.1): the per-capita denominators of the city bubbles.
    cities: dict[str, int] = {}
    if city_ids:
        rows = session.execute(
            select(City.geoname_id, City.population).where(City.geoname_id.in_(set(city_ids)))
        )
        cities = {str(geoname_id): int(pop or 0) for geoname_id, pop in rows}
    return {"type": "FeatureCollection", "features": features, "city_population": cities}


def _valid_cell(cell: str) -> bool:
    try:
        return bool(h3.is_valid_cell(cell.lower()))
    except (ValueError, TypeError, OverflowError):
        return False


def outlines_with_population(
    session: Session, cells: list[str], caches: AnalysisCaches | None = None
) -> list[dict[str, Any]]:
    """GeoJSON features of valid H3 cells, with residents as in cell rankings."""
    populations = {
        res: cell_population(session.connection(), res, caches)
        for res in {h3.get_resolution(c) for c in cells}
    }
    features = []
    for cell in cells:
        feature = dict(outline(cell))
        pop = populations[h3.get_resolution(cell)].get(h3.str_to_int(cell), 0)
        feature["properties"] = {"population": pop}
        features.append(feature)
    return features


@lru_cache(maxsize=1 << 16)
def outline(cell: str) -> dict[str, Any]:
    """The closed outline of one H3 cell as a GeoJSON feature (see cell_outlines)."""
    ring = [(round(lng, 5), round(lat, 5)) for lat, lng in h3.cell_to_boundary(cell)]
    # Keep the ring continuous across ±180° (h3 gives each vertex in [-180, 180]).
    if max(x for x, _ in ring) - min(x for x, _ in ring) > 180:
        ring = [(x + 360 if x < 0 else x, y) for x, y in ring]
    # h3 winds counter-clockwise; d3-geo fills the *outside* of such a ring.
    ring.reverse()
    ring.append(ring[0])
    return {
        "type": "Feature",
        "id": cell,
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
    }


__all__ = [
    "MAX_GEOMETRY_CELLS",
    "WEB_DIR",
    "outline",
    "outlines_with_population",
    "plotly_bundle",
    "router",
]
