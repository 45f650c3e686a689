"""Replay of CSV/JSONL sightings: bad lines reported by number and skipped, good ones kept."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from swarmwatch.pipeline.cli import ingest_command
from swarmwatch.pipeline.replay import (
    MAX_LINE_BYTES,
    ReplayError,
    detect_format,
    ingest_file,
    parse_lines,
)
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database, ingestlock
from swarmwatch.store.ingestlock import IngestBusy, ingest_lock
from swarmwatch.store.models import Peer, Vantage
from swarmwatch.store.writer import sources_of, vantage_bit
from tests.pipeline_fixtures import INFOHASH, register, write_city_db
from tests.procs import reap
from tests.test_persisted_frames import frames_computed, kept_rows

CSV = f"""ip,port,infohash,time,source
81.2.69.160,6881,{INFOHASH},2026-11-27T12:00:00Z,tracker
not-an-ip,6881,{INFOHASH},2026-11-27T12:00:00Z,tracker
89.160.20.112,6881,{INFOHASH},1795780800,dht
216.160.83.56,99999,{INFOHASH},2026-11-27T12:00:00Z,tracker
175.16.199.0,6881,{INFOHASH.upper()},2026-11-27 12:00:00,pex
10.0.0.1,6881,{INFOHASH},2026-11-27T12:00:00Z,carrier-pigeon
2a02:8108::1,6881,xyz,2026-11-27T12:00:00Z,tracker
67.43.156.0,6881,{INFOHASH},yesterday,tracker
2001:218::1,,{INFOHASH},2026-11-27T12:00:00+02:00,
"""


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_city_db(tmp_path / "city.mmdb")
    monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(path))
    from swarmwatch.config import get_settings

    get_settings.cache_clear()
    return path


def test_csv_good_rows_kept_bad_rows_reported(db: Database, city: Path, tmp_path: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.csv"
    f.write_text(CSV)
    report = ingest_file(f, db)
    assert report.accepted == 4
    assert [(e.line, e.reason) for e in report.errors] == [
        (3, "ip is not an IP address"),
        (5, "port is out of range"),
        (7, "source is not one of tracker, dht, pex, swarm, replay"),
        (8, "infohash is not 40 or 64 hex digits"),
        (9, "time is not ISO 8601 or Unix seconds"),
    ]
    assert report.pipeline["stored"] == 4
    with db.session() as s:
        rows = s.scalars(select(Peer)).all()
        assert sum(r.sightings for r in rows) == 4
        assert {r.geoname_id for r in rows} == {2643743, 2694762, 2038180, None}
        assert set().union(*(sources_of(r.sources) for r in rows)) == {
            "tracker",
            "dht",
            "pex",
            "replay",
        }
        replay = s.scalar(select(Vantage.id).where(Vantage.name == "replay"))
        assert replay is not None and {r.vantages for r in rows} == {vantage_bit(replay)}


def test_jsonl_and_format_detection(db: Database, city: Path, tmp_path: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.data"
    lines = [
        {"ip": "81.2.69.160", "port": 1, "infohash": INFOHASH, "time": 1795780800, "seed": True},
        {
            "ip": "81.2.69.161",
            "infohash": INFOHASH,
            "time": "2026-11-27T12:00:00Z",
            "vantage": "vps-2",
        },
        ["not", "an", "object"],
        {"ip": 42, "infohash": INFOHASH, "time": 1},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    assert detect_format(f) == "jsonl"
    report = ingest_file(f, db)
    assert report.accepted == 2 and [e.line for e in report.errors] == [3, 4, 5]
    with db.session() as s:
        assert s.scalar(select(func.sum(Peer.sightings))) == 2
        assert set(s.scalars(select(Vantage.name))) == {"replay", "vps-2"}
        bits = {vantage_bit(v.id) for v in s.scalars(select(Vantage))}
        assert {p.vantages for p in s.scalars(select(Peer))} == bits  # one peer each


def ingest_app() -> typer.Typer:
    """`swarmwatch ingest` as a command of its own, for CliRunner."""
    app = typer.Typer()
    app.command()(ingest_command)
    return app


def test_cli_ingest(db: Database, city: Path, tmp_path: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.csv"
    f.write_text(CSV)
    app = ingest_app()
    result = CliRunner().invoke(app, [str(f)])
    assert result.exit_code == 0, result.output
    assert "4 sightings read, 5 bad lines skipped" in result.output
    assert "line 3: ip is not an IP address" in result.output
    assert "not-an-ip" not in result.output  # the offending value is never echoed
    missing = CliRunner().invoke(app, [str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2


def test_a_missing_header_is_reported_not_fatal() -> None:
    out = list(
        parse_lines(
            [b"81.2.69.160,1,abc,1\n", b"ip,infohash,time\n", f"1.2.3.4,{INFOHASH},1\n".encode()],
            fmt="csv",
        )
    )
    assert isinstance(out[0], ReplayError) and out[0].line == 1
    assert isinstance(out[1], PeerSighting) and out[1].source == Source.REPLAY


_fields = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["81.2.69.160", "::1", INFOHASH, "tracker", "1795780800", "2026-11-27T12:00:00Z", ""]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_fields, min_size=0, max_size=6), max_size=8))
def test_csv_parser_never_raises(rows: list[list[str]]) -> None:
    header = b"ip,port,infohash,time,source\n"
    raw = [header] + [",".join(r).encode("utf-8", "surrogatepass") + b"\n" for r in rows]
    for item in parse_lines(raw, fmt="csv"):
        assert isinstance(item, PeerSighting | ReplayError)
        if isinstance(item, PeerSighting):
            assert item.seen_at.tzinfo is not None and len(item.infohash) in (40, 64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=10), st.sampled_from(["csv", "jsonl"]))
def test_parser_survives_arbitrary_bytes(lines: list[bytes], fmt: str) -> None:
    items = list(parse_lines(lines, fmt=fmt))
    for item in items:
        assert isinstance(item, PeerSighting | ReplayError)
        if isinstance(item, ReplayError):
            assert 1 <= item.line <= len(lines)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["ip", "port", "infohash", "time", "source", "seed", "vantage"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), _fields
        ),
    )
)
def test_jsonl_records_never_crash(record: dict[str, object]) -> None:
    raw = [json.dumps(record).encode()]
    (item,) = parse_lines(raw, fmt="jsonl")
    assert isinstance(item, PeerSighting | ReplayError)
    if isinstance(item, ReplayError):  # a message never repeats an address it was given
        assert "81.2.69.160" not in str(item) and "::1" not in str(item)


def test_overlong_lines_are_bad_lines(tmp_path: Path, db: Database, city: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "long.csv"
    f.write_bytes(
        b"ip,infohash,time\n"
        + b"x" * (MAX_LINE_BYTES + 10)
        + b"\n"
        + f"81.2.69.160,{INFOHASH},1\n".encode()
    )
    report = ingest_file(f, db)
    assert report.accepted == 1 and [(e.line, e.reason) for e in report.errors] == [
        (2, "line too long")
    ]


def _replay_file(path: Path, lines: int) -> None:
    """A CSV of `lines` sightings: 40 addresses in four networks, each seen again every
    two minutes (further apart than the coalescing window), from two sources."""
    nets = ("81.2.69.{}", "89.160.20.{}", "24.0.0.{}", "1.128.0.{}")
    rows = ["ip,port,infohash,time,source"]
    for i in range(lines):
        address = nets[i % 4].format(100 + i % 10 + (i % 40) // 10)
        at = 1795780800 + 120 * (i // 40) + i % 40
        rows.append(f"{address},6881,{INFOHASH},{at},{('tracker', 'dht')[i % 2]}")
    path.write_text("\n".join(rows) + "\n")


def _state(db: Database) -> tuple[object, ...]:
    with db.engine.connect() as conn:
        # Peer keys differ between databases (each study has its own key): compare
        # what each peer holds.
        peers = conn.execute(
            select(Peer.geoname_id, Peer.sightings, Peer.sources, Peer.first_seen)
        ).all()
        activity = conn.execute(
            text("SELECT day, source, sightings, new_peers FROM rollup_activity ORDER BY 1, 2")
        ).all()
        active = conn.execute(
            text("SELECT interval_s, bucket, peers FROM rollup_active ORDER BY 1, 2")
        ).all()
    return sorted(map(repr, peers)), [tuple(a) for a in activity], [tuple(a) for a in active]


def test_ingest_resumes_after_what_was_stored_and_never_counts_a_line_twice(
    db: Database, city: Path, tmp_path: Path
) -> None:
    """An ingest cut short (here: the file as it was when it stopped, a prefix of it),
    then the whole file: the same peers, counts and frames as one uninterrupted run;
    and the same file once more stores nothing."""
    whole, cut = tmp_path / "peers.csv", tmp_path / "cut.csv"
    _replay_file(whole, 400)
    text_whole = whole.read_text()
    cut.write_text("".join(text_whole.splitlines(keepends=True)[:151]))  # header + 150
    options = {"batch_size": 7}  # many batches, so marks land mid-file

    fresh = Database(f"sqlite:///{tmp_path / 'uninterrupted.db'}")
    try:
        fresh.upgrade()
        register(fresh, ("alpha", [INFOHASH]))
        once = ingest_file(whole, fresh, pipeline_options=options)
        expected = _state(fresh)
    finally:
        fresh.dispose()
    assert once.accepted == 400 and once.resumed_lines == 0

    register(db, ("alpha", [INFOHASH]))
    first = ingest_file(cut, db, pipeline_options=options)
    assert first.accepted == 150
    second = ingest_file(whole, db, pipeline_options=options)
    assert second.resumed_lines == 151 and second.resumed_bytes == len(cut.read_bytes())
    assert second.already_stored == 150 and second.accepted == 250
    assert _state(db) == expected
    third = ingest_file(whole, db, pipeline_options=options)
    assert third.resumed_lines == 401 and third.accepted == 0
    assert third.pipeline["stored"] == 0
    assert _state(db) == expected


def test_cli_ingest_says_where_it_resumed_and_its_rate(
    db: Database, city: Path, tmp_path: Path
) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.csv"
    _replay_file(f, 50)
    app = ingest_app()
    first = CliRunner().invoke(app, [str(f)])
    assert first.exit_code == 0, first.output
    assert "resumed" not in first.output and "lines in" in first.output
    again = CliRunner().invoke(app, [str(f)])
    assert again.exit_code == 0, again.output
    assert "resumed after line 51" in again.output
    assert "50 sightings skipped as already counted by an earlier ingest; nothing new" in (
        again.output
    )


def test_cli_ingest_keeps_the_maps_frames_for_the_first_server_start(
    db: Database, city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.csv"
    _replay_file(f, 400)  # 14 two-minute rounds: a day's first hour
    app = ingest_app()
    skipped = CliRunner().invoke(app, [str(f), "--no-keep-frames"])
    assert skipped.exit_code == 0, skipped.output
    assert "time-lapse" not in skipped.output
    assert kept_rows(db) == 0  # the control: nothing is kept unless ingest keeps it
    f.write_text(f.read_text() + f"81.2.69.160,6881,{INFOHASH},1795784400,tracker\n")
    result = CliRunner().invoke(app, [str(f)])
    assert result.exit_code == 0, result.output
    assert "time-lapse kept in" in result.output
    assert kept_rows(db) > 0

    # A server's first start: its warm-up asks the map's question with new caches.
    # Every frame is read back as kept; none is computed, and each is what a fresh
    # computation from the rollups gives.
    from swarmwatch.analysis import frames as frames_module
    from swarmwatch.analysis.caches import AnalysisCaches
    from swarmwatch.analysis.scope import resolve_scope
    from swarmwatch.store.keptframes import PersistedFrames
    from swarmwatch.store.models import Study

    def map_answer(caches: AnalysisCaches) -> bytes:
        with db.engine.connect() as conn:
            study = conn.execute(select(Study.__table__)).one()
            return frames_module.frames_compact(
                conn, resolve_scope(conn, study), caches=caches
            ).body

    fresh = map_answer(AnalysisCaches())
    computed = frames_computed(monkeypatch)
    caches = AnalysisCaches(persisted=PersistedFrames())
    try:
        assert map_answer(caches) == fresh
    finally:
        caches.close()
    assert computed == []
    assert len(json.loads(fresh)["frames"]) == 2  # two hours, both kept


def test_cli_ingest_that_cannot_keep_the_frames_still_succeeds(
    db: Database, city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmwatch.analysis import frames as frames_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(frames_module, "keep_frames", broken)
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.csv"
    _replay_file(f, 50)
    result = CliRunner().invoke(ingest_app(), [str(f)])
    assert result.exit_code == 0, result.output
    assert "50 sightings read" in result.output
    assert "time-lapse not kept (RuntimeError): the ingest is complete" in result.output
    assert "disk full" not in result.output  # a name, never the message


def test_a_second_ingest_is_refused_and_stores_nothing(
    db: Database, city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "peers.csv"
    _replay_file(f, 50)
    app = ingest_app()
    monkeypatch.setattr(ingestlock, "WAIT_SECONDS", 0.2)
    with ingest_lock(db):  # another ingest, as far as the database can tell
        refused = CliRunner().invoke(app, [str(f)])
    assert refused.exit_code == 1, refused.output
    assert "another ingest is running on this database" in refused.output
    # Who holds it: this process (SQLite's lock file) or its server connection.
    assert (f"pid {os.getpid()} since" if db.is_sqlite else "PostgreSQL backend") in (
        refused.output
    )
    with db.engine.connect() as conn:
        for table in ("peer", "replay_progress", "replay_span", "rollup_activity"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    done = CliRunner().invoke(app, [str(f)])  # the other one ended: this one runs
    assert done.exit_code == 0, done.output
    assert "50 sightings read" in done.output


LOCK_CHILD = """
import sys, time
from swarmwatch.store import Database
from swarmwatch.store.ingestlock import ingest_lock
with ingest_lock(Database(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_ingest_leaves_no_lock_behind(db: Database, db_url: str) -> None:
    """The lock ends with its holder, however it ends: after a kill -9 the next ingest
    runs at once, with nothing to expire or clear by hand."""
    child = subprocess.Popen([sys.executable, "-c", LOCK_CHILD, db_url], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"held\n"
        with pytest.raises(IngestBusy), ingest_lock(db, wait=0.2):
            pass
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
        with ingest_lock(db):  # the default wait: a server notices the closed connection
            pass
    finally:
        reap(child)


INGEST_CHILD = """
import sys
from swarmwatch.pipeline.replay import ingest_file
from swarmwatch.store import Database
ingest_file(sys.argv[1], Database(sys.argv[2]), pipeline_options={"batch_size": 20})
"""


@pytest.mark.slow
def test_kill_9_mid_ingest_then_again_counts_every_line_once(
    db: Database, db_url: str, city: Path, tmp_path: Path
) -> None:
    """A real `kill -9` of an ingest between its write batches, then the same file
    again: the database ends as after one uninterrupted run."""
    register(db, ("alpha", [INFOHASH]))
    whole = tmp_path / "peers.csv"
    _replay_file(whole, 20_000)
    env = {**os.environ, "SWARMWATCH_GEOIP_CITY": str(city)}
    child = subprocess.Popen(
        [sys.executable, "-c", INGEST_CHILD, str(whole), db_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            with db.engine.connect() as conn:
                stored = conn.execute(text("SELECT count(*) FROM replay_progress")).scalar()
            if stored and stored >= 5:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL  # killed mid-file, not finished
    finally:
        reap(child)

    again = ingest_file(whole, db)
    assert 0 < again.resumed_lines < 20_001
    assert again.already_stored + again.accepted == 20_000

    fresh = Database(f"sqlite:///{tmp_path / 'uninterrupted.db'}")
    try:
        fresh.upgrade()
        register(fresh, ("alpha", [INFOHASH]))
        ingest_file(whole, fresh)
        assert _state(db) == _state(fresh)
    finally:
        fresh.dispose()


def test_replay_digests_are_keyed_so_a_short_prefix_cannot_be_searched(
    db: Database, city: Path, tmp_path: Path
) -> None:
    """A file of a header and one line: the digest stored for it is not a plain hash of
    those bytes (which anyone could search over all addresses), but keyed with the
    store's secret (which, like the study keys, belongs in key custody)."""
    register(db, ("alpha", [INFOHASH]))
    f = tmp_path / "one.csv"
    f.write_text(f"ip,port,infohash,time,source\n81.2.69.160,6881,{INFOHASH},1795780800,dht\n")
    ingest_file(f, db)
    raw = f.read_bytes()
    with db.engine.connect() as conn:
        digests = {bytes(d) for (d,) in conn.execute(text("SELECT digest FROM replay_progress"))}
    assert len(digests) == 1
    plain = {
        hashlib.sha256(raw).digest(),
        hashlib.blake2b(raw, digest_size=32).digest(),
        hashlib.sha3_256(raw).digest(),
    }
    assert not digests & plain
