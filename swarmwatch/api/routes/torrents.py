"""Torrents: register (magnet, infohash or .torrent upload), list, show with status, delete."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from swarmwatch import registry
from swarmwatch.access import Role, can_read, readable_studies, role_of
from swarmwatch.analysis import cellkey
from swarmwatch.analysis.samplenoise import publication_key, publish_count
from swarmwatch.analysis.summary import seed_states
from swarmwatch.api.deps import (
    ApiKeyApartDep,
    ApiKeyDep,
    DatabaseDep,
    OptionalKeyDep,
    SessionDep,
    SettingsDep,
    require_role,
)
from swarmwatch.api.schemas import (
    INFOHASH,
    CrawlStatus,
    Page,
    SamplePublic,
    TorrentCreate,
    TorrentPublic,
    TrackerPublic,
)
from swarmwatch.store import Database
from swarmwatch.store.models import ApiKey, Sample, Study, Title, Torrent
from swarmwatch.store.rollups import rollup_activity, rollup_place

router = APIRouter(prefix="/api/v1/torrents", tags=["torrents"])

LAST_SAMPLES = 10

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file", "study_id"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the .torrent file"},
        "study_id": {"type": "integer", "minimum": 1},
        "title": {"type": "string", "minLength": 1, "maxLength": 300},
        "trackers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "extra announce URLs, each in its own tier after the file's",
        },
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/TorrentCreate"}},
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
    },
}


def _error(status: int, exc: Exception) -> HTTPException:
    return HTTPException(status_code=status, detail=str(exc))


def _validation_error(exc: ValidationError) -> RequestValidationError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


async def _read_registration(
    request: Request, max_bytes: int
) -> tuple[TorrentCreate, registry.ParsedTorrent]:
    """Parse a JSON or multipart registration; nothing is stored yet."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _read_upload(request, max_bytes)
    if ctype not in ("application/json", ""):
        raise HTTPException(
            status_code=415, detail="send application/json or multipart/form-data (a .torrent)"
        )
    try:
        payload = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status_code=422, detail="request body is not valid JSON") from None
    except RecursionError:  # json nests by recursion: [[[[...]]]] 100,000 deep exhausts it
        raise HTTPException(status_code=422, detail="request body nests too deeply") from None
    try:
        body = TorrentCreate.model_validate(payload)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    try:
        parsed = (
            registry.parse_magnet(body.magnet)
            if body.magnet is not None
            else registry.parse_infohash(body.infohash or "")
        )
    except registry.RegistryInputError as exc:
        raise _error(422, exc) from None
    return body, parsed


async def _read_upload(
    request: Request, max_bytes: int
) -> tuple[TorrentCreate, registry.ParsedTorrent]:
    try:
        form = await request.form(max_files=1, max_fields=250)
    except Exception as exc:  # starlette raises several types for a broken multipart body
        raise HTTPException(status_code=422, detail=f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(status_code=422, detail="multipart upload needs a 'file' part")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(status_code=413, detail=f".torrent larger than {max_bytes} bytes")
        trackers = [str(v) for v in form.getlist("trackers") if str(v).strip()]
        fields: dict[str, Any] = {"study_id": form.get("study_id"), "infohash": "0" * 40}
        if form.get("title") is not None:
            fields["title"] = form.get("title")
        try:
            body = TorrentCreate.model_validate({**fields, "trackers": trackers})
        except ValidationError as exc:
            raise _validation_error(exc) from None
        try:
            parsed = registry.parse_torrent_file(data)
        except registry.RegistryInputError as exc:
            raise _error(422, exc) from None
        return body.model_copy(update={"infohash": None}), parsed
    finally:
        await form.close()


def _status(session: Session, torrent: Torrent, k: int, exact: bool) -> CrawlStatus:
    count, returned = session.execute(
        select(func.count(Sample.id), func.coalesce(func.sum(Sample.peers_returned), 0)).where(
            Sample.torrent_id == torrent.id
        )
    ).one()
    last = session.scalars(
        select(Sample)
        .where(Sample.torrent_id == torrent.id)
        .order_by(Sample.started_at.desc(), Sample.id.desc())
        .limit(LAST_SAMPLES)
    ).all()
    conn = session.connection()

    def published(n: int, rk: int) -> int | None:
        # Exact for the study's owners, cell-key perturbed (the summary's noise) for anyone else.
        return n if exact else cellkey.publish(n, rk, k)

    def count_and_rk(count: Any, rk: Any, *where: Any) -> tuple[int, int]:
        n, rk_sum = conn.execute(
            select(func.coalesce(func.sum(count), 0), func.coalesce(func.sum(rk), 0)).where(*where)
        ).one()
        return int(n), int(rk_sum)

    # The title's unique peers and anomalies, as the summary by title publishes them.
    act, place, title_id = rollup_activity.c, rollup_place.c, torrent.title_id
    peers, peers_rk = count_and_rk(act.new_peers, act.new_peers_rk, act.title_id == title_id)
    placed, placed_rk = count_and_rk(
        place.peers, place.peers_rk, place.title_id == title_id, place.geoname_id != 0
    )
    states = {
        name: published(n, rk) for name, (n, rk) in seed_states(conn, (torrent.title_id,)).items()
    }
    # Coverage of the last swarm round (any vantage): peers sighted over known and reachable.
    round_ = session.execute(
        select(Sample.peers_returned, Sample.known_peers, Sample.id)
        .where(Sample.torrent_id == torrent.id, Sample.known_peers.is_not(None))
        .order_by(Sample.started_at.desc(), Sample.id.desc())
        .limit(1)
    ).first()
    # What trackers and swarm rounds returned counts sightings, not peer rows: for anyone
    # but the owners, noise keyed by what each number is (analysis.samplenoise). Trackers'
    # and the DHT's seeders/leechers are shown as they gave them: anyone can ask the same.
    key = b"" if exact else publication_key(conn)

    def sampled(n: int | None, *identity: str | int) -> int | None:
        if n is None or exact:
            return n
        return publish_count(key, n, k, *identity)

    samples = [SamplePublic.model_validate(s) for s in last]
    for row, public in zip(last, samples, strict=True):
        public.peers_returned = sampled(row.peers_returned, "sample", row.id)
        if row.source == "swarm":  # a swarm round's seeds and leechers are our own peers
            public.seeders = sampled(row.seeders, "sample-seeders", row.id)
            public.leechers = sampled(row.leechers, "sample-leechers", row.id)
    sighted = sampled(round_[0], "round-sighted", round_[2]) if round_ else None
    reachable = sampled(round_[1], "round-reachable", round_[2]) if round_ else None
    return CrawlStatus(
        exact=exact,
        samples=int(count),
        # Keyed by the torrent alone: a sample that adds nothing (a failed announce) must
        # not draw a fresh noise for the same total, or repeats would average it away.
        peers_returned=sampled(int(returned), "returned", torrent.id),
        last_samples=samples,
        unique_peers=published(peers, peers_rk),
        anomalies=published(peers - placed, peers_rk - placed_rk),
        seeds=states["seeds"],
        leechers=states["leechers"],
        unknown_state=states["unknown"],
        round_sighted=sighted,
        round_reachable=reachable,
        coverage=(round(sighted / reachable, 4) if sighted is not None and reachable else None),
    )


def _public(
    session: Session, torrent: Torrent, *, status: bool = False, key: ApiKey | None = None
) -> TorrentPublic:
    study = session.get(Study, torrent.study_id)
    # By primary key: in the session already after a registration (no query), and one
    # row rather than every title of the study otherwise.
    title = session.get(Title, torrent.title_id)
    return TorrentPublic(
        infohash=torrent.infohash,
        infohash_v1=torrent.infohash_v1,
        infohash_v2=torrent.infohash_v2,
        study_id=torrent.study_id,
        title_id=torrent.title_id,
        title=title.name if title else "",
        name=torrent.name,
        size=torrent.size,
        metadata_state=torrent.metadata_state,
        added_at=torrent.added_at,
        trackers=[TrackerPublic.model_validate(t) for t in torrent.trackers],
        status=(
            _status(
                session,
                torrent,
                study.k_threshold if study else 5,
                study is not None and role_of(session, study, key) >= Role.OWNER,
            )
            if status
            else None
        ),
    )


@router.post(
    "",
    status_code=201,
    response_model=TorrentPublic,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={409: {"description": "already registered in this study"}, 413: {}, 415: {}},
)
async def register_torrent(
    request: Request, settings: SettingsDep, db: DatabaseDep, _key: ApiKeyApartDep
) -> TorrentPublic:
    """Register a torrent in a study: JSON `{study_id, title?, magnet | infohash, trackers?}`,
    or a multipart upload with a `file` (.torrent) and `study_id` (and `title`, `trackers`)."""
    body, parsed = await _read_registration(request, settings.max_torrent_bytes)
    # The database calls block: run them in a worker thread, not on the event loop, in a
    # write transaction of their own that commits there (never held across an await).
    return await run_in_threadpool(_store_registration, db, body, parsed, _key)


def _store_registration(
    db: Database, body: TorrentCreate, parsed: registry.ParsedTorrent, key: ApiKey
) -> TorrentPublic:
    try:
        extra = registry.parse_tracker_list(body.trackers)
    except registry.RegistryInputError as exc:
        raise _error(422, exc) from None
    with db.writing() as session:
        # Held here so the session keeps it (its identity map holds rows weakly):
        # register_torrent and _public then find it without querying again.
        _held = require_role(session, body.study_id, key, Role.WRITE)
        try:
            torrent = registry.register_torrent(
                session, body.study_id, parsed, title=body.title, extra_trackers=extra
            )
        except registry.NotFound as exc:
            raise _error(404, exc) from None
        except (registry.DuplicateTorrent, registry.StudySealed) as exc:
            raise _error(409, exc) from None
        except registry.RegistryInputError as exc:
            raise _error(422, exc) from None
        return _public(session, torrent)


def _readable_torrents(
    session: Session, infohash: str, study_id: int | None, key: ApiKey | None
) -> list[Torrent]:
    try:
        found = registry.torrents_by_infohash(session, infohash)
    except registry.RegistryInputError as exc:
        raise _error(422, exc) from None
    if study_id is not None:
        found = [t for t in found if t.study_id == study_id]
    readable = {
        sid
        for sid in {t.study_id for t in found}
        if (study := session.get(Study, sid)) is not None
        and can_read(study, role_of(session, study, key))
    }
    found = [t for t in found if t.study_id in readable]
    if not found:
        where = f" in study {study_id}" if study_id is not None else ""
        raise HTTPException(status_code=404, detail=f"torrent {infohash} not registered{where}")
    return found


def _one(found: list[Torrent], infohash: str) -> Torrent:
    if len(found) > 1:
        studies = ", ".join(str(t.study_id) for t in found)
        raise HTTPException(
            status_code=409,
            detail=f"torrent {infohash} is registered in studies {studies}: add ?study_id=",
        )
    return found[0]


StudyFilter = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


@router.get("", response_model=Page[TorrentPublic])
def list_torrents(
    session: SessionDep,
    key: OptionalKeyDep,
    study_id: StudyFilter = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    """Registered torrents, newest last: of public studies and those the caller may read."""
    where: list[Any] = []
    if study_id is not None:
        require_role(session, study_id, key, Role.READ)
        where.append(Torrent.study_id == study_id)
    else:
        where.append(Torrent.study_id.in_(select(Study.id).where(readable_studies(key))))
    total = session.scalar(select(func.count(Torrent.id)).where(*where)) or 0
    rows = session.scalars(
        select(Torrent)
        .where(*where)
        .options(selectinload(Torrent.trackers))
        .order_by(Torrent.id)
        .limit(limit)
        .offset(offset)
    ).all()
    items = [_public(session, t) for t in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


#: A registered torrent's infohash in any of the forms registration takes.
InfohashPath = Annotated[
    str, Path(description="v1 or v2 hex, or v1 base32", json_schema_extra={"pattern": INFOHASH})
]


@router.get("/{infohash}", response_model=TorrentPublic)
def get_torrent(
    infohash: InfohashPath, session: SessionDep, key: OptionalKeyDep, study_id: StudyFilter = None
) -> TorrentPublic:
    """One torrent with its crawl status: trackers, last samples, unique peers."""
    torrent = _one(_readable_torrents(session, infohash, study_id, key), infohash)
    return _public(session, torrent, status=True, key=key)


@router.delete("/{infohash}", status_code=204, response_class=Response)
def delete_torrent(
    infohash: InfohashPath, session: SessionDep, _key: ApiKeyDep, study_id: StudyFilter = None
) -> Response:
    """Stop watching a torrent and delete its registration and samples."""
    torrent = _one(_readable_torrents(session, infohash, study_id, _key), infohash)
    require_role(session, torrent.study_id, _key, Role.WRITE)
    session.delete(torrent)
    return Response(status_code=204)
