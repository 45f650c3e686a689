"""Analysis endpoints: summary, rankings (JSON, CSV, sidecar), frames, GeoJSON.

Owners read exact counts; anyone else cell-key perturbed ones, nothing below k
(swarmwatch.analysis.cellkey). All reads come from rollups.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from swarmwatch.analysis.export import (
    cells_geojson,
    cities_geojson,
    iter_csv,
    method_headers,
    sidecar,
)
from swarmwatch.analysis.frames import (
    DEFAULT_TOP_CITIES,
    frames_compact,
    frames_gzip,
    frames_json,
    keep_frames_warm,
)
from swarmwatch.analysis.rankings import (
    DEFAULT_CELL_RES,
    Ranking,
    compute_ranking,
)
from swarmwatch.analysis.scope import Scope, ScopeError, resolve_scope
from swarmwatch.analysis.summary import compute_summary
from swarmwatch.api.deps import CachesDep, ExactReaderDep, ReadableStudyDep, SessionDep
from swarmwatch.store.rollups import CELL_RESOLUTIONS, FRAME_INTERVALS, FRAME_RESOLUTIONS

log = logging.getLogger(__name__)

#: How long shutdown waits for the warm-up and background refreshes to finish their step.
SHUTDOWN_WAIT_S = 30.0


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Keep the default time-lapse warm in the background while the server runs.

    At shutdown the background readers end before the server does: whoever disposes of
    the engine next (the CLI, a test) must find no connection still out, or the pool
    it returns to is already gone and drops it unclosed.
    """
    stop = threading.Event()
    database = getattr(app.state, "database", None)
    caches = getattr(app.state, "analysis_caches", None)
    warm: threading.Thread | None = None
    if caches is not None:
        caches.open()
    if database is not None and caches is not None:
        warm = threading.Thread(
            target=keep_frames_warm,
            args=(database, caches, stop),
            daemon=True,
            name="warm-frames",
        )
        warm.start()
    try:
        yield
    finally:
        stop.set()
        if warm is not None:
            warm.join(SHUTDOWN_WAIT_S)
        # Both, even when the warm-up overran its wait: the refresher must close too.
        refresher_stopped = caches is None or caches.close(SHUTDOWN_WAIT_S)
        if not refresher_stopped or (warm is not None and warm.is_alive()):
            log.warning("background analysis still running after %.0f s", SHUTDOWN_WAIT_S)


def _in_flight(caches: CachesDep) -> Iterator[None]:
    # Counted so the start-up warm-up pauses for requests (versioned.Activity).
    with caches.activity:
        yield


router = APIRouter(
    prefix="/api/v1/studies",
    tags=["analysis"],
    lifespan=_lifespan,
    dependencies=[Depends(_in_flight)],
)

#: The GeoJSON answers' media type (RFC 7946), as the OpenAPI document must say.
GEOJSON_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "GeoJSON FeatureCollection",
        "content": {"application/geo+json": {"schema": {"type": "object"}}},
    }
}
TitleQ = Annotated[str | None, Query(max_length=300, description="title id or name")]
FromQ = Annotated[
    datetime | None, Query(alias="from", description="window start (widened to the UTC day)")
]
ToQ = Annotated[datetime | None, Query(alias="to", description="window end (widened to the day)")]
VantageQ = Annotated[str | None, Query(max_length=100, description="first-seen vantage")]
LevelQ = Annotated[str, Query(pattern="^(city|metro|country|cell)$")]
MetricQ = Annotated[str, Query(pattern="^(absolute|per_capita|alpha60_density)$")]
CellResQ = Annotated[int, Query(ge=min(CELL_RESOLUTIONS), le=max(CELL_RESOLUTIONS))]
MinPopQ = Annotated[
    int | None,
    Query(ge=0, le=10**10, description="default 100,000 for per_capita, 0 for absolute"),
]


class RankingRowPublic(BaseModel):
    rank: int
    place: str
    country: str
    place_id: str
    lat: float | None
    lon: float | None
    population: int | None
    peers: int
    per_100k: float | None
    ci_low: float | None
    ci_high: float | None
    # metric=alpha60_density only (swarmwatch.analysis.rankings)
    land_area_km2: float | None = None
    density_per_km2: float | None = None
    alpha60_score: float | None = None


class RankingPublic(BaseModel):
    level: str
    metric: str
    res: int | None
    min_population: int
    places_published: int
    places_suppressed: int
    rows: list[RankingRowPublic]
    method: dict[str, Any]


class SummaryPublic(BaseModel):
    study_id: int
    title: str | None
    unique_peers: int | None
    downloads_estimate: int | None
    placed_at_city: int | None
    anomalies: int | None
    anomaly_share: float | None
    country_only: int | None
    unlocated: int | None
    seeds: int | None
    leechers: int | None
    # Peers no sighting showed the state of (see method.seeds): not leechers.
    unknown_state: int | None = None
    by_title: dict[str, int | None]
    sightings_by_source: dict[str, int | None]
    sightings_by_vantage: dict[str, int | None]
    daily: list[dict[str, Any]]
    high_water_mark: dict[str, Any] | None
    anomaly_sightings_by_reason: dict[str, int | None]
    estimate: dict[str, Any] | None
    method: dict[str, Any]


class CellPublic(BaseModel):
    h3: str
    peers: int


class FramePublic(BaseModel):
    t: str
    peers: int | None
    cells: list[CellPublic]
    top_cities: list[dict[str, Any]]
    # Highest per-capita rates among metros of DEFAULT_MIN_POPULATION or more: {id, name,
    # country, lat, lon, population, peers, per_100k, ci_low, ci_high}.
    top_metros: list[dict[str, Any]] = []


class FramesPublic(BaseModel):
    interval: int
    res: int
    frames: list[FramePublic]
    method: dict[str, Any]


class CompactCityPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")
    geoname_id: int
    name: str
    country: str | None
    lat: float
    lon: float


class CompactMetroPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    name: str
    country: str | None
    lat: float
    lon: float
    population: int


class CompactFramePublic(BaseModel):
    """One frame of format=compact: parallel arrays of indices into the answer's tables
    (swarmwatch.analysis.frames explains the encoding)."""

    model_config = ConfigDict(extra="forbid")
    t: str
    peers: int | None
    cell_gaps: list[int]
    cell_peers: list[int]
    city: list[int]
    city_peers: list[int | None]
    metro: list[int]
    metro_peers: list[int | None]
    metro_ci_low: list[float | None]
    metro_ci_high: list[float | None]


class FramesCompactPublic(BaseModel):
    """format=compact: each cell, city and metro named once, frames as index arrays."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["compact"]
    interval: int
    res: int
    cells: list[str]
    cities: list[CompactCityPublic]
    metros: list[CompactMetroPublic]
    frames: list[CompactFramePublic]
    method: dict[str, Any]


def _scope(
    session: SessionDep,
    study: ReadableStudyDep,
    title: str | None,
    start: datetime | None,
    end: datetime | None,
    vantage: str | None,
    exact: bool,
) -> Scope:
    try:
        return resolve_scope(
            session.connection(),
            study,
            title=title,
            start=start,
            end=end,
            vantage=vantage,
            exact=exact,
        )
    except ScopeError as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None


def _ranking(session: SessionDep, scope: Scope, caches: CachesDep, **kwargs: Any) -> Ranking:
    try:
        return compute_ranking(session.connection(), scope, caches=caches, **kwargs)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.get("/{study_id}/summary", response_model=SummaryPublic)
def summary(
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    vantage: VantageQ = None,
) -> dict[str, Any]:
    """Unique peers (downloads), anomalies, seeds/leechers, daily series, Chao1 estimate."""
    scope = _scope(session, study, title, start, end, vantage, exact)
    return compute_summary(session.connection(), scope, caches)


@router.get("/{study_id}/rankings", response_model=RankingPublic)
def rankings(
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    level: LevelQ = "city",
    metric: MetricQ = "absolute",
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    vantage: VantageQ = None,
    min_population: MinPopQ = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
    res: CellResQ = DEFAULT_CELL_RES,
) -> Response:
    scope = _scope(session, study, title, start, end, vantage, exact)
    ranking = _ranking(
        session,
        scope,
        caches,
        level=level,
        metric=metric,
        min_population=min_population,
        limit=limit,
        res=res,
    )
    body = {
        "level": ranking.level,
        "metric": ranking.metric,
        "res": ranking.res,
        "min_population": ranking.min_population,
        "places_published": ranking.places_published,
        "places_suppressed": ranking.places_suppressed,
        "rows": [_row(row) for row in ranking.rows],
        "method": ranking.method,
    }
    return JSONResponse(body, headers=method_headers(ranking))


def _row(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in RankingRowPublic.model_fields}


@router.get(
    "/{study_id}/rankings.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "UTF-8 CSV, header row"}},
)
def rankings_csv(
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    level: LevelQ = "city",
    metric: MetricQ = "absolute",
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    vantage: VantageQ = None,
    min_population: MinPopQ = None,
    limit: Annotated[int | None, Query(ge=1, le=10**7)] = None,
    res: CellResQ = DEFAULT_CELL_RES,
) -> StreamingResponse:
    """Every published place by default (no limit), streamed in chunks."""
    scope = _scope(session, study, title, start, end, vantage, exact)
    ranking = _ranking(
        session,
        scope,
        caches,
        level=level,
        metric=metric,
        min_population=min_population,
        limit=limit,
        res=res,
    )
    headers = method_headers(ranking)
    headers["Content-Disposition"] = f'attachment; filename="study{study.id}_{level}.csv"'
    return StreamingResponse(
        (chunk.encode("utf-8") for chunk in iter_csv(ranking)),
        media_type="text/csv; charset=utf-8",
        headers=headers,
    )


@router.get("/{study_id}/rankings.json")
def rankings_sidecar(
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    level: LevelQ = "city",
    metric: MetricQ = "absolute",
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    vantage: VantageQ = None,
    min_population: MinPopQ = None,
    res: CellResQ = DEFAULT_CELL_RES,
) -> dict[str, Any]:
    """The method metadata of rankings.csv with the same parameters (the sidecar)."""
    scope = _scope(session, study, title, start, end, vantage, exact)
    ranking = _ranking(
        session,
        scope,
        caches,
        level=level,
        metric=metric,
        min_population=min_population,
        limit=None,
        res=res,
    )
    return sidecar(ranking)


@router.get("/{study_id}/frames", response_model=FramesPublic | FramesCompactPublic)
def frames(
    request: Request,
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    interval: Annotated[
        int,
        Query(
            description=f"seconds, one of {FRAME_INTERVALS} (never below the cadence)",
            json_schema_extra={"enum": list(FRAME_INTERVALS)},
        ),
    ] = 3600,
    res: Annotated[int, Query(ge=min(FRAME_RESOLUTIONS), le=max(FRAME_RESOLUTIONS))] = 4,
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    top: Annotated[
        int,
        Query(ge=0, le=100, description="cities, and metros per capita, listed per frame"),
    ] = DEFAULT_TOP_CITIES,
    encoding: Annotated[
        str,
        Query(
            alias="format",
            pattern="^(full|compact)$",
            description="full: the contract's {t, peers, cells: [{h3, peers}], top_cities, "
            "top_metros}; compact: each cell, city and metro named once, frames as parallel "
            "arrays of indices, counts and intervals (swarmwatch.analysis.frames; what the "
            "map page reads)",
        ),
    ] = "full",
) -> Response:
    scope = _scope(session, study, title, start, end, None, exact)
    gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
    headers = {"Vary": "Accept-Encoding"}
    try:
        if encoding == "compact":
            answer = frames_compact(
                session.connection(),
                scope,
                interval=interval,
                res=res,
                top=top,
                waiting=caches.activity.set_aside,
                caches=caches,
            )
            body = answer.gzipped if gzip_ok else answer.body
            if answer.stale_since is not None:
                # The open frame as last computed while ingest moves on (a few seconds).
                headers["X-Swarmwatch-Data-Read-At"] = answer.stale_since.isoformat(
                    timespec="seconds"
                )
        # Joined from each frame's cached JSON (or gzip piece), not re-validated or
        # re-compressed: 120 frames of thousands of cells are tens of MB at full scale.
        elif gzip_ok:
            body = frames_gzip(
                session.connection(), scope, interval=interval, res=res, top=top, caches=caches
            )
        else:
            body = frames_json(
                session.connection(), scope, interval=interval, res=res, top=top, caches=caches
            )
    except ScopeError as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    if gzip_ok:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


@router.get("/{study_id}/cells.geojson", response_class=Response, responses=GEOJSON_200)
def cells(
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    res: CellResQ = DEFAULT_CELL_RES,
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    vantage: VantageQ = None,
) -> Response:
    scope = _scope(session, study, title, start, end, vantage, exact)
    ranking = _ranking(session, scope, caches, level="cell", limit=None, res=res)
    return Response(
        json.dumps(cells_geojson(ranking), separators=(",", ":")),
        media_type="application/geo+json",
        headers=method_headers(ranking),
    )


@router.get("/{study_id}/cities.geojson", response_class=Response, responses=GEOJSON_200)
def cities(
    study: ReadableStudyDep,
    exact: ExactReaderDep,
    session: SessionDep,
    caches: CachesDep,
    title: TitleQ = None,
    start: FromQ = None,
    end: ToQ = None,
    vantage: VantageQ = None,
) -> Response:
    scope = _scope(session, study, title, start, end, vantage, exact)
    ranking = _ranking(session, scope, caches, level="city", limit=None)
    return Response(
        json.dumps(cities_geojson(ranking), separators=(",", ":")),
        media_type="application/geo+json",
        headers=method_headers(ranking),
    )
