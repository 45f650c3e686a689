"""Published frames kept across server starts (store.keptframes): a new server reads the
closed frames back instead of computing them, answers stay what a fresh computation
gives, and a frame whose counts moved on is computed again."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import h3
import pytest
from sqlalchemy import func, select

from swarmwatch.analysis import frames as frames_module
from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.frames import frames_compact
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.store import Database
from swarmwatch.store.batch import SightingRow
from swarmwatch.store.keptframes import PersistedFrames
from swarmwatch.store.models import FrameAnswer, Study, Title, Torrent
from swarmwatch.store.writer import BatchWriter, WriteBatch

AT = datetime(2026, 11, 27, 10, tzinfo=UTC)
PLACES = [  # (geoname id, country, lat, lon)
    (2643743, "GB", 51.51, -0.09),
    (2950159, "DE", 52.52, 13.40),
    (1850147, "JP", 35.68, 139.69),
]
HOURS = 8


def sighting(rng: random.Random, hour: int, peer: int) -> SightingRow:
    gid, cc, lat, lon = rng.choice(PLACES)
    cell = h3.str_to_int(h3.latlng_to_cell(lat + rng.random(), lon, 7))
    at = AT + timedelta(hours=hour, minutes=rng.randrange(60))
    return SightingRow(1, 1, 1, peer.to_bytes(16, "little"), at, "tracker", "v1", None,
                       cc, gid, gid, cell, None)  # fmt: skip


@pytest.fixture
def study(db: Database) -> Database:
    with db.session() as s:
        s.add(Study(id=1, name="kept frames", k_threshold=2))
        s.flush()
        s.add(Title(id=1, study_id=1, name="t"))
        s.flush()
        s.add(Torrent(id=1, study_id=1, title_id=1, infohash_v1="a" * 40))
    rng = random.Random(5)
    writer = BatchWriter(db.engine)
    for hour in range(HOURS):
        batch = WriteBatch()
        batch.sightings.extend(sighting(rng, hour, rng.randrange(60)) for _ in range(80))
        writer.write(batch)
    return db


def answers(db: Database, caches: AnalysisCaches) -> list[Any]:
    out = []
    with db.engine.connect() as conn:
        row = conn.execute(select(Study.__table__)).one()
        for exact in (False, True):
            scope = resolve_scope(conn, row, exact=exact)
            out.append(frames_compact(conn, scope, caches=caches).body)
    return out


def frames_computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The buckets of the frames computed from here on (not read from the cache or kept)."""
    computed: list[int] = []
    real = frames_module._frame

    def counting(*args: Any, **kwargs: Any) -> Any:
        computed.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(frames_module, "_frame", counting)
    return computed


def test_a_new_server_reads_closed_frames_back(
    study: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = answers(study, AnalysisCaches())  # computed afresh, nothing kept
    with study.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FrameAnswer)).scalar_one() == 0
    assert answers(study, AnalysisCaches(persisted=PersistedFrames())) == fresh
    with study.engine.connect() as conn:
        kept = conn.execute(select(func.count()).select_from(FrameAnswer)).scalar_one()
    # Every frame and the whole compact answer, for the public and the owner.
    assert kept == 2 * HOURS + 2

    computed = frames_computed(monkeypatch)
    # A restart: new caches, the same database. No frame is computed again.
    assert answers(study, AnalysisCaches(persisted=PersistedFrames())) == fresh
    assert computed == []


def test_a_frame_whose_counts_moved_on_is_computed_again(
    study: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers(study, AnalysisCaches(persisted=PersistedFrames()))
    # A late sighting of a new peer in the first hour: that frame's counts change.
    batch = WriteBatch()
    batch.sightings.append(sighting(random.Random(1), 0, 999))
    BatchWriter(study.engine).write(batch)
    age_kept(study)  # not recent: the kept time-lapse is not served stale meanwhile
    fresh = answers(study, AnalysisCaches())
    computed = frames_computed(monkeypatch)
    assert answers(study, AnalysisCaches(persisted=PersistedFrames())) == fresh
    first = int(AT.timestamp()) // 3600
    assert computed.count(first) == 2  # public and owner: its kept version was stale


def test_a_frame_round_trips_through_its_kept_form(study: Database) -> None:
    caches = AnalysisCaches()
    with study.engine.connect() as conn:
        row = conn.execute(select(Study.__table__)).one()
        scope = resolve_scope(conn, row, exact=False)
        frame_set = frames_module.frame_set_of(conn, scope, 3600, 4, 10, caches=caches)
    assert frame_set.frames
    for frame in frame_set.frames:
        again = frames_module.Frame.from_bytes(frame.to_bytes())
        assert again.as_dict() == frame.as_dict()


def age_kept(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            FrameAnswer.__table__.update().values(read_at=datetime.now(UTC) - timedelta(hours=1))
        )


@pytest.mark.parametrize("recent", [True, False])
def test_an_open_frame_that_moved_on_is_served_as_kept_if_recent(
    study: Database, monkeypatch: pytest.MonkeyPatch, recent: bool
) -> None:
    """After a restart, an open frame whose counts moved on since the last server kept it
    (and the time-lapse that holds it) is served as kept, marked stale, if it is recent
    enough (the cache recomputes it in the background, like any answer of that age); an
    older one is computed in the request."""
    answers(study, AnalysisCaches(persisted=PersistedFrames()))
    batch = WriteBatch()
    batch.sightings.append(sighting(random.Random(2), HOURS - 1, 998))  # the newest hour
    BatchWriter(study.engine).write(batch)
    if not recent:
        age_kept(study)
    computed = frames_computed(monkeypatch)
    newest = int((AT + timedelta(hours=HOURS - 1)).timestamp()) // 3600
    caches = AnalysisCaches(persisted=PersistedFrames())
    with study.engine.connect() as conn:
        row = conn.execute(select(Study.__table__)).one()
        scope = resolve_scope(conn, row, exact=True)
        served = frames_compact(conn, scope, caches=caches)
    # The stale answer's background refresh ends before the fixture disposes of the
    # engine, as a server's does at shutdown (else its connection outlives the pool).
    assert caches.close(60)
    if recent:
        assert computed == [] and served.stale_since is not None
    else:
        assert computed == [newest] and served.stale_since is None
        assert served.body == answers(study, AnalysisCaches())[1]


def test_a_deleted_study_leaves_no_kept_frame(study: Database) -> None:
    answers(study, AnalysisCaches(persisted=PersistedFrames()))
    with study.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(FrameAnswer)).scalar_one() > 0
        conn.execute(Study.__table__.delete().where(Study.__table__.c.id == 1))
    with study.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FrameAnswer)).scalar_one() == 0


def test_only_the_maps_questions_are_kept(study: Database) -> None:
    """Any other question is answered, and cached in memory, but leaves nothing in the
    database: a reader of a public study asking every list length, resolution and
    window in turn cannot grow it."""
    caches = AnalysisCaches(persisted=PersistedFrames())
    try:
        with study.engine.connect() as conn:
            row = conn.execute(select(Study.__table__)).one()
            scope = resolve_scope(conn, row)
            for top in (0, 1, 2, 99, 100):
                frames_compact(conn, scope, top=top, caches=caches)
                frames_module.frames_json(conn, scope, top=top, caches=caches)
            for res in (3, 5):
                frames_compact(conn, scope, res=res, caches=caches)
            assert kept_rows(study) == 0
            frames_compact(conn, scope, caches=caches)  # the map's question: kept
            kept = kept_rows(study)
            assert kept == HOURS + 1  # its frames and its compact answer
            day = AT.date().isoformat()
            windowed = resolve_scope(conn, row, start=datetime.fromisoformat(day))
            frames_compact(conn, windowed, caches=caches)  # its frames, in a window
            frames_module.frames_json(conn, scope, caches=caches)  # the same frames
            assert kept_rows(study) == kept
    finally:
        caches.close()


def kept_rows(db: Database) -> int:
    """Kept frames, read on a connection of its own (one with a read open since before
    the save, as the test's is, would not see them on SQLite)."""
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(FrameAnswer)).scalar_one())
