"""`swarmwatch ingest` of files that overlap in any way counts each sighting once.

An alpha60-style log (two swarms, two sources, two vantages, peers re-seen every 30 s)
is ingested once as a whole into one database, and as overlapping pieces (a suffix
overlap, a file inside another, a superset, the same lines shuffled within each second,
pieces cut mid-minute, per-vantage logs and their merge) into another: every published
number (summary with Chao1's f1 and f2, rankings, frames, sightings by source) and
every peer row must be the same. The property test drives the overlap logic and the
stored coverage (store.coverage, on a real SQLite file) through random overlapping
files with random kills between batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.pool import StaticPool

from swarmwatch.analysis.frames import compute_frames
from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.analysis.summary import compute_summary
from swarmwatch.config import get_settings
from swarmwatch.custody import KeyCustody
from swarmwatch.pipeline.anonymise import seal_study
from swarmwatch.pipeline.overlap import ReplayOverlap, Verdict
from swarmwatch.pipeline.pipeline import SIGHTING_WINDOW_SECONDS, Pipeline
from swarmwatch.pipeline.replay import (
    FileCursor,
    ingest_file,
    ingest_lines,
    parse_lines,
    replay_key,
)
from swarmwatch.sightings import PeerSighting
from swarmwatch.store import Database
from swarmwatch.store.coverage import SLOT_SECONDS, load_coverage
from swarmwatch.store.database import upgrade_database
from swarmwatch.store.models import Base, Peer, ReplayEdge, ReplaySpan, Study
from tests.pipeline_fixtures import INFOHASH, INFOHASH_B, register, write_city_db
from tests.procs import reap

HEADER = "ip,port,infohash,time,source,vantage,seed"
START = 1795780800  # 2026-11-27 12:00 UTC
#: Addresses in the test City database's networks (London, Linköping, Dallas, Brisbane,
#: New York), and some it cannot place (anomalies).
NETS = ("81.2.69.{}", "89.160.20.{}", "24.0.1.{}", "1.128.0.{}", "100.1.2.{}", "8.8.4.{}")


def alpha60_log(minutes: int = 150, seed: int = 7) -> list[str]:
    """Lines in time order: each stream re-announces every 30 s and sees a share of the
    peers then active, a few seconds apart; some peers are seen once or twice only."""
    rng = random.Random(seed)
    peers = []
    for i in range(90):
        address = NETS[i % len(NETS)].format(100 + i // len(NETS))
        first = rng.randrange(0, minutes * 2)
        length = rng.choice([0, 0, 1, 3, 10, 40, 400])  # in 30-s rounds
        peers.append((address, first, first + length, rng.random() < 0.3))
    streams = [
        (ih, source, vantage)
        for ih in (INFOHASH, INFOHASH_B)
        for source in ("tracker", "dht")
        for vantage in ("v1", "v2")
    ]
    lines: list[tuple[int, str]] = []
    for round_ in range(minutes * 2):
        for s, (ih, source, vantage) in enumerate(streams):
            for p, (address, first, last, seeding) in enumerate(peers):
                if first <= round_ <= last and rng.random() < 0.6 and (p + s) % 3:
                    at = START + 30 * round_ + rng.randrange(0, 30)
                    seed = "true" if seeding and round_ > first + 2 else "false"
                    port = 6881 + rng.randrange(0, 3)  # ports differ: not part of a sighting
                    lines.append((at, f"{address},{port},{ih},{at},{source},{vantage},{seed}"))
                    if rng.random() < 0.02:  # a duplicate line (a merge of copies)
                        lines.append((at, lines[-1][1]))
    lines.sort(key=lambda item: item[0])
    return [line for _, line in lines]


def shuffled_within_seconds(lines: Sequence[str], seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    by_second: dict[str, list[str]] = {}
    for line in lines:
        by_second.setdefault(line.split(",")[3], []).append(line)
    out: list[str] = []
    for group in by_second.values():  # dicts keep the (time) order of first appearance
        rng.shuffle(group)
        out += group
    return out


def cut(lines: Sequence[str], a: float, b: float) -> list[str]:
    return list(lines[int(len(lines) * a) : int(len(lines) * b)])


def write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text(HEADER + "\n" + "".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_city_db(tmp_path / "city.mmdb")
    monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(path))
    get_settings.cache_clear()
    return path


def answers(db: Database) -> dict[str, object]:
    """Every number the API publishes for the study (exact, as its owner reads them),
    and what each peer row holds (peer keys differ between databases: not compared)."""
    with db.engine.connect() as conn:
        study = conn.execute(select(Study.__table__)).one()
        scope = resolve_scope(conn, study, exact=True)
        summary = compute_summary(conn, scope)
        summary.pop("method", None)
        if isinstance(summary.get("estimate"), dict):
            summary["estimate"].pop("data_read_at", None)  # when it was read, not what
        out: dict[str, object] = {"summary": summary}
        for level in ("city", "metro", "country"):
            ranking = compute_ranking(conn, scope, level=level, limit=None)
            out[level] = [repr(r) for r in ranking.rows]
        for interval in (3600, 86400):
            out[f"frames{interval}"] = compute_frames(conn, scope, interval=interval, res=4)[
                "frames"
            ]
        peers = conn.execute(
            select(
                Peer.title_id,
                Peer.geoname_id,
                Peer.sightings,
                Peer.sources,
                Peer.vantages,
                Peer.seed,
                Peer.first_seen,
                Peer.last_seen,
            )
        ).all()
        # Which line of a minute's repeats is stored (the first ingested) sets the
        # second of first_seen and last_seen: order-dependent below the minute.
        out["peers"] = sorted(
            repr((*p[:6], p[6].replace(second=0), p[7].replace(second=0))) for p in peers
        )
        out["peer_seconds"] = sorted(map(repr, peers))
        activity = conn.execute(
            text(
                "SELECT title_id, day, source, vantage, sightings, seed_sightings, new_peers"
                " FROM rollup_activity ORDER BY 1, 2, 3, 4"
            )
        ).all()
        out["activity"] = [tuple(r[:6]) for r in activity]
        new_by_day: Counter[tuple[int, int]] = Counter()
        for r in activity:
            new_by_day[(r[0], r[1])] += r[6]
        out["new_peers"] = sorted(new_by_day.items())
        # Which source and vantage a new peer is credited to is that of its first sighting
        # *as ingested* (store.rollups): order-dependent when pieces come out of time order.
        out["new_by_source_vantage"] = [(r[0], r[1], r[2], r[3], r[6]) for r in activity]
        out["anomalies"] = [
            tuple(r)
            for r in conn.execute(
                text("SELECT torrent_id, source, reason, count FROM anomaly ORDER BY 1, 2, 3")
            )
        ]
    return out


def order_independent(*answers: dict[str, object]) -> None:
    """Drop what depends on the order pieces are ingested in when that is not time
    order: the vantage and source a new peer is credited to (its first sighting as
    ingested), and the second of a peer's first and last sighting within their minute
    (the first ingested of a minute's repeats is the one stored)."""
    for a in answers:
        del a["new_by_source_vantage"], a["peer_seconds"]


def assert_each_equal(got: dict[str, object], expected: dict[str, object]) -> None:
    """Every answer of `expected` equal in `got`, failing with the name of the first that is not."""
    for key in expected:
        assert got[key] == expected[key], key


def union_once(tmp_path: Path, lines: Sequence[str]) -> dict[str, object]:
    """The answers of one ingest of the whole log into a fresh database, with the number
    of sightings it put into the pipeline (as "accepted")."""
    fresh = Database(f"sqlite:///{tmp_path / 'union-once.db'}")
    try:
        fresh.upgrade()
        register(fresh, ("alpha", [INFOHASH, INFOHASH_B]))
        report = ingest_file(write(tmp_path / "union.csv", lines), fresh)
        assert report.late == 0 and report.already_stored == 0
        return {**answers(fresh), "accepted": report.accepted}
    finally:
        fresh.dispose()


LOG = alpha60_log()
V1 = [line for line in LOG if line.split(",")[5] == "v1"]
V2 = [line for line in LOG if line.split(",")[5] == "v2"]
#: (pieces, whether they come in time order: then even the source and vantage each new
#: peer is credited to are those of the union once).
CASES = {
    "suffix overlap (a rotated log)": ([cut(LOG, 0, 0.6), cut(LOG, 0.4, 1)], True),
    "copies cut mid-minute, in time order": (
        [cut(LOG, 0, 0.1234), cut(LOG, 0.1, 0.5001), cut(LOG, 0.2345, 0.7003), cut(LOG, 0.6999, 1)],
        True,
    ),
    "a file inside another, then both sides": (
        [cut(LOG, 0.2, 0.8), cut(LOG, 0.4, 0.6), cut(LOG, 0, 0.3), cut(LOG, 0.7, 1)],
        False,
    ),
    "a superset": ([cut(LOG, 0.33, 0.61), LOG], False),
    "three overlapping pieces (the README's control)": (
        [cut(LOG, 0, 0.6), cut(LOG, 0.4, 1), cut(LOG, 0.2, 0.8)],
        False,
    ),
    "the same lines shuffled within each second": (
        [cut(LOG, 0, 0.5), shuffled_within_seconds(LOG), LOG],
        False,
    ),
    "each vantage's log, then the merge": ([V1, cut(V2, 0.5, 1), LOG], False),
}


@pytest.mark.parametrize(("files", "in_time_order"), list(CASES.values()), ids=list(CASES))
def test_overlapping_files_publish_what_the_union_once_does(
    db: Database, city: Path, tmp_path: Path, files: list[list[str]], in_time_order: bool
) -> None:
    expected = union_once(tmp_path, LOG)
    register(db, ("alpha", [INFOHASH, INFOHASH_B]))
    accepted = skipped = 0
    for i, lines in enumerate(files):
        report = ingest_file(write(tmp_path / f"piece{i}.csv", lines), db)
        assert report.late == 0 and report.bad == 0 and report.unregistered == 0
        assert report.accepted + report.already_stored + report.repeats == len(lines)
        accepted += report.accepted
        skipped += report.already_stored
    # Each sighting was put into the pipeline once over all the pieces, and the pieces'
    # overlaps (more lines than the log has) were skipped as already counted.
    assert accepted == expected["accepted"]
    assert skipped > 0
    got = {**answers(db), "accepted": accepted}
    summary = got["summary"]
    assert isinstance(summary, dict) and summary["estimate"]["f1"] and summary["estimate"]["f2"]
    assert got["summary"] == expected["summary"]
    if not in_time_order:
        order_independent(got, expected)
    assert got.keys() == expected.keys()
    assert_each_equal(got, expected)


def test_without_the_coverage_the_same_pieces_count_twice(
    db: Database, city: Path, tmp_path: Path
) -> None:
    """The control (and the README's figures): the check above can fail. Three
    overlapping pieces (none a prefix of another), with coverage wiped after each, keep
    the unique peers but count sightings again: more of them, and another f1 and f2.
    With coverage, the same pieces give the union's numbers."""
    expected = union_once(tmp_path, LOG)
    pieces = [cut(LOG, 0, 0.6), cut(LOG, 0.4, 1), cut(LOG, 0.2, 0.8)]

    def chao1_and_sightings(answer: dict[str, object]) -> tuple[object, ...]:
        estimate = answer["summary"]["estimate"]  # type: ignore[index]
        sightings = sum(row[4] for row in answer["activity"])  # type: ignore[attr-defined]
        return estimate["observed"], estimate["f1"], estimate["f2"], sightings

    assert chao1_and_sightings(expected) == (89, 1, 4, 6431)
    register(db, ("alpha", [INFOHASH, INFOHASH_B]))
    for i, lines in enumerate(pieces):
        ingest_file(write(tmp_path / f"piece{i}.csv", lines), db)
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM replay_span"))
            conn.execute(text("DELETE FROM replay_edge"))
    assert chao1_and_sightings(answers(db)) == (89, 0, 2, 11571)


def test_late_lines_are_not_counted_and_reported(db: Database, city: Path, tmp_path: Path) -> None:
    """A line more than a minute older than its stream's newest is late: not counted,
    counted in the report; the same file again counts nothing more."""
    register(db, ("alpha", [INFOHASH]))
    rows = [
        f"81.2.69.160,1,{INFOHASH},{START + 600},tracker,v1,",
        f"81.2.69.161,1,{INFOHASH},{START + 590},tracker,v1,",  # 10 s back: in order enough
        f"81.2.69.162,1,{INFOHASH},{START + 400},tracker,v1,",  # 200 s back: late
        f"81.2.69.163,1,{INFOHASH},{START + 400},dht,v1,",  # another stream: first line
    ]
    first = ingest_file(write(tmp_path / "late.csv", rows), db)
    assert (first.accepted, first.late, first.already_stored) == (3, 1, 0)
    again = ingest_file(write(tmp_path / "late.csv", rows), db)
    assert again.accepted == 0 and again.already_stored + again.late == 4


def test_lines_of_unregistered_torrents_are_left_for_later(
    db: Database, city: Path, tmp_path: Path
) -> None:
    register(db, ("alpha", [INFOHASH]))
    rows = [
        f"81.2.69.160,1,{INFOHASH},{START},tracker,v1,",
        f"81.2.69.161,1,{INFOHASH_B},{START},tracker,v1,",
    ]
    f = write(tmp_path / "two.csv", rows)
    first = ingest_file(f, db)
    assert (first.accepted, first.unregistered) == (1, 1)
    register(db, ("beta", [INFOHASH_B]))
    again = ingest_file(f, db)
    assert (again.accepted, again.already_stored, again.unregistered) == (1, 1, 0)


def test_the_slot_is_the_pipelines_coalescing_window() -> None:
    assert SLOT_SECONDS == SIGHTING_WINDOW_SECONDS


PRIVATE = [f"81.2.69.{160 + i}" for i in range(10)] + [f"2a02:8108::{i + 1:x}" for i in range(6)]


def test_no_address_reaches_the_database_and_digests_are_keyed(
    db: Database, db_url: str, city: Path, tmp_path: Path
) -> None:
    """Coverage holds keyed digests only: no address in any form in any row (and for
    the IPv6 ones, whose 16 packed bytes cannot turn up by chance, nowhere in the
    SQLite file), and no digest is a plain hash of an address, with or without its
    minute."""
    register(db, ("alpha", [INFOHASH]))
    lines = [
        f"{address},6881,{INFOHASH},{START + 20 * t},tracker,v1,"
        for t in range(30)
        for address in PRIVATE
        if (t + len(address)) % 3
    ]
    ingest_file(write(tmp_path / "a.csv", lines[: len(lines) * 2 // 3]), db)
    ingest_file(write(tmp_path / "b.csv", lines[len(lines) // 3 :]), db)
    with db.engine.connect() as conn:
        edges = [
            (int(s), bytes(d))
            for s, d in conn.execute(text("SELECT slot, digests FROM replay_edge"))
        ]
        assert edges and conn.execute(text("SELECT count(*) FROM replay_span")).scalar()
        rows = [
            tuple(row)
            for table in Base.metadata.sorted_tables
            for row in conn.execute(select(table))
        ]
    texts = repr(rows).encode()
    blobs = b"".join(bytes(v) for row in rows for v in row if isinstance(v, bytes | memoryview))
    for address in PRIVATE:
        ip = ipaddress.ip_address(address)
        assert address.encode() not in texts and ip.exploded.encode() not in texts
        assert ip.packed not in blobs
    digests = {d[i : i + 8] for _, d in edges for i in range(0, len(d), 8)}
    plain = set()
    for slot, _ in edges:
        for address in PRIVATE:
            packed = ipaddress.ip_address(address).packed
            for data in (packed, slot.to_bytes(8, "big", signed=True) + packed):
                plain.add(hashlib.blake2b(data, digest_size=8).digest())
                plain.add(hashlib.sha256(data).digest()[:8])
    assert digests and not digests & plain
    if db_url.startswith("sqlite:///"):
        base = db_url.removeprefix("sqlite:///")
        raw = b"".join(Path(p).read_bytes() for p in (base, base + "-wal") if Path(p).exists())
        for address in PRIVATE:
            ip = ipaddress.ip_address(address)
            assert address.encode() not in raw
            if ip.version == 6:
                assert ip.packed not in raw


# -- the property: random overlapping files, random kills, each sighting once -------------


def _sighting_key(s: PeerSighting) -> tuple[object, ...]:
    """What the pipeline stores once: one peer (and seed state) in one stream and minute."""
    slot = int(s.seen_at.timestamp()) // SLOT_SECONDS
    return (s.infohash, str(s.source), s.vantage, slot, s.ip, s.seed)


SMALL = [
    f"{ip},1,{ih},{START + t},{src},v1,{seed}"
    for t in range(0, 600, 7)
    for ih, src in ((INFOHASH, "tracker"), (INFOHASH_B, "dht"))
    for ip, seed in (("81.2.69.160", ""), ("24.0.1.7", "true"), ("1.128.0.9", "false"))
    if (t * 13 + len(ip)) % 5 < 3
]


def _run_file(
    engine: Engine, lines: Sequence[str], key: bytes, kill_after: int | None, rng: random.Random
) -> list[tuple[object, ...]]:
    """One ingest of `lines` through ReplayOverlap, committing what it counted and the
    ledger's changes in batches of random size (as the writer does: in one transaction),
    stopping for good after `kill_after` batches. Returns the sightings committed."""
    with engine.connect() as conn:
        stored = load_coverage(conn, {INFOHASH, INFOHASH_B})
    overlap = ReplayOverlap(key, stored, {INFOHASH, INFOHASH_B})
    committed: list[tuple[object, ...]] = []
    pending: list[tuple[object, ...]] = []
    batches = 0
    raw = [(HEADER + "\n").encode()] + [(line + "\n").encode() for line in lines]
    for item in parse_lines(raw, fmt="csv"):
        assert isinstance(item, PeerSighting)
        if overlap.verdict(item) is Verdict.COUNT:
            pending.append(_sighting_key(item))
        if pending and rng.random() < 0.2:  # a batch ends here, with a mark
            if kill_after is not None and batches >= kill_after:
                return committed  # kill -9: the rest is lost
            with engine.begin() as conn:
                overlap.ledger.write(conn, overlap.ledger.position, lambda sql: sql)
            committed += pending
            pending = []
            batches += 1
    if kill_after is None or batches < kill_after:
        with engine.begin() as conn:
            overlap.ledger.write(conn, overlap.ledger.position, lambda sql: sql)
        committed += pending
    return committed


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(
            st.integers(0, len(SMALL)),
            st.integers(0, len(SMALL)),
            st.booleans(),
            st.one_of(st.none(), st.integers(0, 4)),
        ),
        min_size=1,
        max_size=5,
    ),
    seed=st.integers(0, 2**16),
)
def test_random_overlaps_and_kills_count_each_sighting_once(
    pieces: list[tuple[int, int, bool, int | None]],
    seed: int,
) -> None:
    """Whatever pieces of the log are ingested, shuffled within seconds or not, killed
    between batches or not, and then the whole log once more: every sighting of the log
    is counted exactly once."""
    # One in-memory SQLite database (one connection, real transactions) per example.
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine, tables=[ReplaySpan.__table__, ReplayEdge.__table__])
    rng = random.Random(seed)
    key = os.urandom(32)
    counted: list[tuple[object, ...]] = []
    for a, b, shuffle, kill in pieces:
        lines = SMALL[min(a, b) : max(a, b)]
        if shuffle:
            lines = shuffled_within_seconds(lines, seed)
        counted += _run_file(engine, lines, key, kill, rng)
    counted += _run_file(engine, SMALL, key, None, rng)
    raw = [(HEADER + "\n").encode()] + [(line + "\n").encode() for line in SMALL]
    expected = {
        _sighting_key(s) for s in parse_lines(raw, fmt="csv") if isinstance(s, PeerSighting)
    }
    assert Counter(counted) == Counter(expected)
    # Storage grows with files, not sightings: a handful of spans and edge minutes.
    with engine.connect() as conn:
        spans = conn.execute(text("SELECT count(*) FROM replay_span")).scalar_one()
        edge_slots = conn.execute(
            text("SELECT count(*) FROM (SELECT DISTINCT infohash, source, slot FROM replay_edge)")
        ).scalar_one()
    assert spans <= 2 * (len(pieces) + 1) and edge_slots <= 8 * (len(pieces) + 1)


# -- the real CLI, killed -------------------------------------------------------------------


@pytest.mark.slow
def test_cli_kill_9_then_a_rotated_log_then_the_whole_counts_each_sighting_once(
    db: Database, db_url: str, city: Path, tmp_path: Path
) -> None:
    """`swarmwatch ingest` of the first 70 % of the log killed with SIGKILL mid-file;
    then the rotated log (the last 40 %: it overlaps the first piece's end), then the
    whole log: the numbers of the union once, and the command says what it skipped,
    where it resumed and its rate."""
    expected = union_once(tmp_path, LOG)
    register(db, ("alpha", [INFOHASH, INFOHASH_B]))
    env = {**os.environ, "SWARMWATCH_DATABASE_URL": db_url, "SWARMWATCH_GEOIP_CITY": str(city)}
    # Small batches, so the kill lands between two of them, mid-file.
    env["SWARMWATCH_WRITER_BATCH_SIZE"] = "200"
    cli = [sys.executable, "-c", "from swarmwatch.cli import app; app()", "ingest"]
    old = write(tmp_path / "peers.log.1", cut(LOG, 0, 0.7))
    child = subprocess.Popen(
        [*cli, str(old)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            with db.engine.connect() as conn:
                written = conn.execute(text("SELECT count(*) FROM replay_progress")).scalar()
            if written:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL  # killed mid-file, not finished
    finally:
        reap(child)
    rotated = write(tmp_path / "peers.log", cut(LOG, 0.6, 1))
    second = subprocess.run(
        [*cli, str(rotated)], env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    whole = write(tmp_path / "whole.csv", LOG)
    third = subprocess.run([*cli, str(whole)], env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    # It starts as the killed piece did: that far is a resume; the rest of what the
    # rotated log held is skipped by coverage.
    assert "resumed after line" in third.stdout
    assert "sightings skipped as already counted by an earlier ingest; the first new one" in (
        third.stdout
    )
    assert " lines in " in third.stdout and "/s" in third.stdout
    fourth = subprocess.run(
        [*cli, str(whole)], env=env, capture_output=True, text=True, timeout=300
    )
    assert fourth.returncode == 0, fourth.stderr
    assert "resumed after line 9254" in fourth.stdout and "; nothing new" in fourth.stdout
    assert " 0 stored" in fourth.stdout
    got = answers(db)
    expected.pop("accepted")
    # The rotated log came before the rest of the killed piece: out of time order.
    order_independent(got, expected)
    assert_each_equal(got, expected)


def test_a_file_ingested_before_0011_is_not_counted_again(
    db_url: str, city: Path, tmp_path: Path
) -> None:
    """From the previous head: a piece ingested as 0010 did (prefix marks only), then
    0011, then the whole log and a copy cut elsewhere: the numbers of the union once.
    The old marks alone skip the lines they hold, and those lines gain coverage as
    they pass, so the copy cut elsewhere (no prefix of anything) is skipped too."""
    expected = union_once(tmp_path, LOG)
    expected.pop("accepted")
    db = Database(db_url)
    try:
        upgrade_database(db.engine, "0010_i15c_privacy")
        register(db, ("alpha", [INFOHASH, INFOHASH_B]))
        old = write(tmp_path / "old.csv", cut(LOG, 0, 0.4))
        custody = KeyCustody.from_settings(get_settings())
        cursor = FileCursor(replay_key(db, custody))

        async def as_0010_did() -> None:
            async with Pipeline(db, custody=custody, batch_size=500) as pipeline:
                await ingest_lines(cursor.read(old), pipeline, fmt="csv", cursor=cursor)

        asyncio.run(as_0010_did())
        db.upgrade()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM replay_progress")).scalar()
            assert not conn.execute(text("SELECT count(*) FROM replay_span")).scalar()
        whole = ingest_file(write(tmp_path / "whole.csv", LOG), db)
        assert whole.resumed_lines == len(cut(LOG, 0, 0.4)) + 1  # the header too
        elsewhere = ingest_file(write(tmp_path / "elsewhere.csv", cut(LOG, 0.1, 0.3)), db)
        assert elsewhere.accepted == 0 and elsewhere.already_stored == len(cut(LOG, 0.1, 0.3))
        got = answers(db)
    finally:
        db.dispose()
    order_independent(got, expected)
    assert_each_equal(got, expected)


def test_sealing_a_study_deletes_its_swarms_replay_digests(
    db: Database, city: Path, tmp_path: Path
) -> None:
    """The replay key (under custody) could test a guessed address against a sealed
    study's digests: they go with its key, except for a swarm another study watches."""
    register(db, ("alpha", [INFOHASH]), ("beta", [INFOHASH_B]), ("gamma", [INFOHASH_B]))
    ingest_file(write(tmp_path / "a.csv", cut(LOG, 0, 0.2)), db)

    def edges() -> dict[str, int]:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT infohash, count(*) FROM replay_edge GROUP BY 1"))
            return {str(ih): int(n) for ih, n in rows}

    assert edges().keys() == {INFOHASH, INFOHASH_B}
    with db.session() as session:
        for name in ("alpha", "beta"):
            study = session.execute(select(Study).where(Study.name == name)).scalar_one()
            seal_study(session, study.id)
    assert edges().keys() == {INFOHASH_B}  # gamma still watches it
    with db.session() as session:
        study = session.execute(select(Study).where(Study.name == "gamma")).scalar_one()
        seal_study(session, study.id)
    assert edges() == {}
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM replay_span")).scalar()


def test_coverage_grows_with_files_and_streams_not_sightings(
    db: Database, city: Path, tmp_path: Path
) -> None:
    """The README's figure: four overlapping pieces of the log and then the whole leave
    one span per stream and three part-counted minutes (where the whole begins, and
    the two it ends in), whatever the pieces left before."""
    register(db, ("alpha", [INFOHASH, INFOHASH_B]))
    pieces = [cut(LOG, 0, 0.1234), cut(LOG, 0.1, 0.5001), cut(LOG, 0.2345, 0.7003)]
    for i, lines in enumerate([*pieces, cut(LOG, 0.6999, 1), LOG]):
        ingest_file(write(tmp_path / f"p{i}.csv", lines), db)
    streams = {tuple(line.split(",")[i] for i in (2, 4, 5)) for line in LOG}
    with db.engine.connect() as conn:
        spans = conn.execute(text("SELECT count(*) FROM replay_span")).scalar()
        slots = conn.execute(
            text("SELECT DISTINCT infohash, source, vantage, slot FROM replay_edge")
        ).all()
        digests = conn.execute(text("SELECT digests FROM replay_edge")).all()
    assert len(streams) == 8 and spans == 8 and len(slots) == 3 * 8
    assert sum(len(bytes(d)) for (d,) in digests) < 2_000  # 8 bytes a sighting there


HEAD = LOG[:900]


_HEAD_ONCE: dict[str, dict[str, object]] = {}


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pieces=st.lists(
        st.tuples(st.integers(0, len(HEAD)), st.integers(0, len(HEAD)), st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_random_pieces_through_the_real_ingest_publish_the_union_once(
    city: Path, tmp_path_factory: pytest.TempPathFactory, pieces: list[tuple[int, int, bool]]
) -> None:
    """The same property end to end: random pieces of a small log (some shuffled within
    each second), then the log itself, through ingest_file and the real pipeline into
    SQLite: the numbers of the log ingested once."""
    tmp = tmp_path_factory.mktemp("pieces")
    if not _HEAD_ONCE:
        _HEAD_ONCE["answers"] = union_once(tmp, HEAD)
    expected = dict(_HEAD_ONCE["answers"])
    expected.pop("accepted")
    db = Database(f"sqlite:///{tmp / 'pieces.db'}")
    try:
        db.upgrade()
        register(db, ("alpha", [INFOHASH, INFOHASH_B]))
        for i, (a, b, shuffle) in enumerate(pieces):
            lines = HEAD[min(a, b) : max(a, b)]
            if shuffle:
                lines = shuffled_within_seconds(lines, i)
            ingest_file(write(tmp / f"piece{i}.csv", lines), db)
        ingest_file(write(tmp / "all.csv", HEAD), db)
        got = answers(db)
    finally:
        db.dispose()
    order_independent(got, expected)
    assert_each_equal(got, expected)
