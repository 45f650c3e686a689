"""Replay: sightings collected elsewhere (CSV or JSONL) fed through the same pipeline.

Each line is untrusted input: a bad line raises ReplayRowError inside the parser,
is reported with its line number (never its content: it may hold an address), and
is skipped; good lines are never lost because of a bad neighbour.

Resumable and idempotent, whatever the overlap: every sighting is checked against the
stored coverage of its stream (pipeline.overlap: the minutes of each swarm, source and
vantage that earlier ingests counted), and what this run counts is added to it in the
transaction of the batch that stores it. A file run again after any interruption, a
longer or rotated log, a copy cut elsewhere, or a merge of several, counts each
sighting once. Each batch also stores a keyed digest of the file's bytes up to its
last line (replay_progress): the same file, or one that starts with it, says where it
resumed, and files ingested before coverage was kept are recognised by it.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from swarmwatch.config import get_settings
from swarmwatch.custody import KeyCustody
from swarmwatch.pipeline.anonymise import REPLAY_SECRET, check_custody, stored_secret
from swarmwatch.pipeline.overlap import ReplayOverlap, Verdict
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database
from swarmwatch.store.batch import ReplayMark
from swarmwatch.store.coverage import ReplayLedger, load_coverage
from swarmwatch.store.ingestlock import ingest_lock
from swarmwatch.store.models import ReplayProgress, StoreSecret, Torrent

log = logging.getLogger(__name__)

#: Longest line read; real rows are < 200 bytes, this bounds memory on hostile files.
MAX_LINE_BYTES = 64 * 1024
#: Bad lines listed in a report (all are counted).
MAX_REPORTED_ERRORS = 100
FIELDS = ("ip", "port", "infohash", "time", "source")
_HEX_INFOHASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_EPOCH = re.compile(r"\d{1,12}(\.\d{1,9})?")


class ReplayError(ValueError):
    """The one error of the replay parser: a line (or the file's header) is unusable.

    The message says what is wrong, never the offending value (it may be an address).
    """

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(slots=True)
class ReplayReport:
    """What an ingest did: lines read, sightings handed to the pipeline, bad lines."""

    lines: int = 0
    accepted: int = 0
    bad: int = 0
    errors: list[ReplayError] = field(default_factory=list)
    pipeline: dict[str, int] = field(default_factory=dict)
    # Where this run resumed: lines (and bytes) of the file an earlier run had stored.
    resumed_lines: int = 0
    resumed_bytes: int = 0
    # Sightings read and not put, because an earlier ingest counted them: on the lines
    # above, or anywhere else (its stream's coverage, pipeline.overlap).
    already_stored: int = 0
    first_new_line: int = 0  # the first line this run counted (0: none)
    repeats: int = 0  # the same sighting again in its minute, in this file
    late: int = 0  # out of time order in its stream by more than a minute: not counted
    unregistered: int = 0  # no torrent with its infohash when the run began: not counted
    seconds: float = 0.0

    @property
    def lines_per_second(self) -> float:
        """Lines read by this run (after where it resumed) per second."""
        return self.lines / self.seconds if self.seconds else 0.0

    def add_error(self, error: ReplayError) -> None:
        self.bad += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)


def parse_time(value: Any, line: int) -> datetime:
    """ISO 8601 (naive means UTC) or Unix seconds, as an aware UTC datetime."""
    if isinstance(value, bool):
        raise ReplayError(line, "time is not a timestamp")
    if isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ReplayError(line, "time is not a timestamp")
    try:
        if _EPOCH.fullmatch(text):
            return datetime.fromtimestamp(float(text), UTC)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise ReplayError(line, "time is not ISO 8601 or Unix seconds") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_record(record: dict[str, Any], line: int, vantage: str) -> PeerSighting:
    """One row (already split into fields) as a PeerSighting."""
    missing = [f for f in ("ip", "infohash", "time") if record.get(f) in (None, "")]
    if missing:
        raise ReplayError(line, f"missing {', '.join(missing)}")
    raw_ip = record["ip"]
    if not isinstance(raw_ip, str):
        raise ReplayError(line, "ip is not a string")
    try:
        ip = ipaddress.ip_address(raw_ip.strip())
    except ValueError:
        raise ReplayError(line, "ip is not an IP address") from None
    port = record.get("port")
    if port not in (None, ""):
        try:
            port_n = int(port)  # validated, then forgotten: ports are never stored
        except (TypeError, ValueError):
            raise ReplayError(line, "port is not a number") from None
        if isinstance(port, bool) or not 0 <= port_n <= 65535:
            raise ReplayError(line, "port is out of range")
    else:
        port_n = 0
    infohash = record["infohash"]
    if not isinstance(infohash, str) or not _HEX_INFOHASH.fullmatch(infohash.strip().lower()):
        raise ReplayError(line, "infohash is not 40 or 64 hex digits")
    source_raw = record.get("source") or Source.REPLAY.value
    try:
        source = Source(str(source_raw).strip().lower())
    except ValueError:
        raise ReplayError(
            line, "source is not one of " + ", ".join(s.value for s in Source)
        ) from None
    seed_raw = record.get("seed")
    seed: bool | None
    if seed_raw in (None, ""):
        seed = None
    elif isinstance(seed_raw, bool):
        seed = seed_raw
    elif str(seed_raw).strip().lower() in {"1", "true", "yes"}:
        seed = True
    elif str(seed_raw).strip().lower() in {"0", "false", "no"}:
        seed = False
    else:
        raise ReplayError(line, "seed is not a boolean")
    row_vantage = record.get("vantage")
    if row_vantage not in (None, "") and not isinstance(row_vantage, str):
        raise ReplayError(line, "vantage is not a string")
    return PeerSighting(
        infohash=infohash.strip().lower(),
        ip=ip,
        port=port_n,
        source=source,
        vantage=(str(row_vantage).strip()[:100] if row_vantage else vantage),
        seen_at=parse_time(record["time"], line),
        seed=seed,
    )


def _lines(raw: Iterable[bytes]) -> Iterator[tuple[int, str | ReplayError]]:
    for number, chunk in enumerate(raw, start=1):
        if len(chunk) > MAX_LINE_BYTES:
            yield number, ReplayError(number, "line too long")
            continue
        try:
            yield number, chunk.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield number, ReplayError(number, "not UTF-8")


def parse_lines(
    raw: Iterable[bytes], *, fmt: str, vantage: str = "replay"
) -> Iterator[PeerSighting | ReplayError]:
    """Sightings (or the error of each bad line), in order, from a file's lines.

    fmt is "csv" (a header naming at least ip, infohash, time) or "jsonl".
    Never raises for bad content: errors are yielded, so the caller counts them.
    """
    header: list[str] | None = None
    for number, text in _lines(raw):
        if isinstance(text, ReplayError):
            yield text
            continue
        if not text.strip() or (fmt == "csv" and text.lstrip().startswith("#")):
            continue
        try:
            if fmt == "jsonl":
                try:
                    record = json.loads(text)
                except (ValueError, RecursionError):
                    raise ReplayError(number, "not a JSON object") from None
                if not isinstance(record, dict):
                    raise ReplayError(number, "not a JSON object")
            else:
                try:
                    cells = next(csv.reader([text]))
                except csv.Error:
                    raise ReplayError(number, "not a CSV row") from None
                if header is None:
                    header = [c.strip().lower() for c in cells]
                    if not {"ip", "infohash", "time"} <= set(header):
                        header = None
                        raise ReplayError(number, "header must name ip, infohash and time")
                    continue
                if len(cells) != len(header):
                    raise ReplayError(number, f"{len(cells)} fields, header has {len(header)}")
                record = dict(zip(header, cells, strict=True))
            yield parse_record(record, number, vantage)
        except ReplayError as error:
            yield error


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".csv", ".tsv", ".txt"}:
        return "csv"
    with path.open("rb") as f:
        first = f.read(1024).lstrip()
    return "jsonl" if first.startswith(b"{") else "csv"


async def ingest_lines(
    raw: Iterable[bytes],
    pipeline: Pipeline,
    *,
    fmt: str,
    vantage: str = "replay",
    cursor: FileCursor | None = None,
    resume_after: int = 0,
    overlap: ReplayOverlap | None = None,
) -> ReplayReport:
    """Feed parsed lines into a running pipeline; returns once they are all written.

    With a cursor (the reader of `raw`), a replay mark follows each sighting, and the
    sightings of lines up to `resume_after` (stored by an earlier run) are not put.
    With an overlap, only the sightings it finds new are put (and the lines up to
    `resume_after` still pass through it, so it knows where each stream stands).
    """
    if overlap is not None and cursor is None:
        raise ValueError("an overlap needs a cursor: its marks carry the coverage")
    report = ReplayReport()
    ledger = overlap.ledger if overlap is not None else None
    for item in parse_lines(raw, fmt=fmt, vantage=vantage):
        done_before = cursor is not None and cursor.lines <= resume_after
        if done_before and overlap is None:
            if not isinstance(item, ReplayError):
                report.already_stored += 1
            continue
        if isinstance(item, ReplayError):
            if not done_before:
                report.lines += 1
                report.add_error(item)
                log.warning("replay: skipped %s", item)
            continue
        if overlap is not None:
            if item.infohash not in overlap.registered:
                if not done_before:
                    report.lines += 1
                    report.unregistered += 1
                continue
            verdict = overlap.verdict(item)
            if done_before:
                # Stored by an earlier run of this file: passed through the overlap
                # (which adds it to coverage if that run predates coverage), not put.
                report.already_stored += 1
                continue
            report.lines += 1
            if verdict is Verdict.ALREADY:
                report.already_stored += 1
                continue
            if verdict is Verdict.REPEAT:
                report.repeats += 1
                continue
            if verdict is Verdict.LATE:
                report.late += 1
                continue
        else:
            report.lines += 1
        await pipeline.put(item)
        report.accepted += 1
        if not report.first_new_line and cursor is not None:
            report.first_new_line = cursor.lines
        if cursor is not None:
            await pipeline.put_mark(cursor.mark(ledger))
    if cursor is not None and (cursor.lines > resume_after or ledger is not None):
        # The lines after the last sighting, and what the overlap decided on them.
        await pipeline.put_mark(cursor.mark(ledger))
    await pipeline.flush()
    report.pipeline = pipeline.stats.as_dict()
    return report


class FileCursor:
    """Reads a file's lines while hashing them: where a replay is, as a ReplayMark.

    The hash is keyed (BLAKE2b with the database's replay key): the lines hold raw
    addresses, and an unkeyed digest of a short prefix (a header and one line) could
    be searched for the address it hashes by anyone, which would keep an address in the
    database in all but name. The key is kept in store_secret only wrapped with the
    deployment secret, as the study keys are: a copy of the database alone cannot
    recompute a digest, so it cannot test a guessed file (or address) against one.
    """

    def __init__(self, key: bytes = b"") -> None:
        self.sha = hashlib.blake2b(key=key, digest_size=32)
        self.bytes_read = 0
        self.lines = 0

    def mark(self, ledger: ReplayLedger | None = None) -> ReplayMark:
        """Where the reader is, and (with a ledger) how far the coverage decisions are."""
        position = ledger.position if ledger is not None else 0
        return ReplayMark(self.sha.copy().digest(), self.bytes_read, self.lines, ledger, position)

    def read(self, path: Path) -> Iterator[bytes]:
        """The lines of `path` (a line longer than MAX_LINE_BYTES comes as a too-long
        placeholder), hashed and counted before each is handed on."""
        with path.open("rb") as f:
            while True:
                chunk = f.readline(MAX_LINE_BYTES + 1)
                if not chunk:
                    return
                self._count(chunk)
                if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
                    while chunk and not chunk.endswith(b"\n"):  # skip the rest of it
                        chunk = f.readline(MAX_LINE_BYTES + 1)
                        self.sha.update(chunk)
                        self.bytes_read += len(chunk)
                    yield b"\0" * (MAX_LINE_BYTES + 1)
                    continue
                yield chunk

    def _count(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.bytes_read += len(chunk)
        self.lines += 1


def _file_lines(path: Path) -> Iterator[bytes]:
    return FileCursor().read(path)


def replay_key(db: Database, custody: KeyCustody) -> bytes:
    """The key of this database's replay digests, made (and stored wrapped) on first use.

    Raises CustodyError (WrongSecret) when `custody` is not this database's secret.
    """
    with db.writing() as session:
        check_custody(session, custody)
        row = session.get(StoreSecret, REPLAY_SECRET)
        if row is not None:
            return custody.unwrap_store_secret(REPLAY_SECRET, stored_secret(row))
        key = secrets.token_bytes(32)
        wrapped = custody.wrap_store_secret(REPLAY_SECRET, key)
        session.add(
            StoreSecret(
                name=REPLAY_SECRET,
                nonce=wrapped.nonce,
                wrapped_key=wrapped.wrapped,
                tag=wrapped.tag,
                secret_id=wrapped.secret_id,
            )
        )
    return key


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """How much of a file earlier runs stored, by their marks of its prefixes."""

    lines: int = 0  # the furthest mark of this file (what `ingest` says it resumed after)
    bytes_read: int = 0
    # The furthest mark written before coverage was kept (migration 0011): lines up to
    # here are counted but not covered, so they are skipped by this mark alone.
    uncovered_lines: int = 0


def resume_points(path: Path, db: Database, key: bytes) -> ResumePoint:
    """Where an earlier run of this file (or of a file it starts with) got to: the
    furthest replay marks whose digest is that of the file's own prefix."""
    size = path.stat().st_size
    with db.session() as session:
        known = {
            bytes(digest): (int(lines), int(read), bool(covered))
            for digest, lines, read, covered in session.execute(
                select(
                    ReplayProgress.digest,
                    ReplayProgress.lines,
                    ReplayProgress.bytes_read,
                    ReplayProgress.covered,
                ).where(ReplayProgress.bytes_read <= size)
            )
        }
    best = ResumePoint()
    if not known:
        return best
    sizes = {read for _, read, _ in known.values()}  # hash only where a mark could match
    cursor = FileCursor(key)
    for _ in cursor.read(path):
        if cursor.bytes_read in sizes and (found := known.get(cursor.mark().digest)):
            uncovered = best.uncovered_lines if found[2] else cursor.lines
            best = ResumePoint(cursor.lines, cursor.bytes_read, uncovered)
    return best


def resume_point(path: Path, db: Database, key: bytes) -> tuple[int, int]:
    """(lines, bytes) of the file that an earlier run stored, or (0, 0)."""
    point = resume_points(path, db, key)
    return point.lines, point.bytes_read


def registered_infohashes(db: Database) -> set[str]:
    """Every registered torrent's infohashes (v1 and v2), lower case, as sightings name them."""
    with db.session() as session:
        rows = session.execute(select(Torrent.infohash_v1, Torrent.infohash_v2)).all()
    return {ih.lower() for row in rows for ih in row if ih}


def ingest_file(
    path: str | Path,
    db: Database,
    *,
    fmt: str | None = None,
    vantage: str = "replay",
    pipeline_options: dict[str, Any] | None = None,
) -> ReplayReport:
    """`swarmwatch ingest FILE`: replay a CSV/JSONL file through a fresh pipeline.

    One ingest at a time per database (store.ingestlock): two at once could both count
    a line that neither has stored yet. IngestBusy if another holds it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    kind = fmt or detect_format(path)
    if kind not in {"csv", "jsonl"}:
        raise ValueError(f"unknown format {kind!r} (csv or jsonl)")

    started = time.perf_counter()
    options = dict(pipeline_options or {})
    if options.get("custody") is None:  # one secret for the digests and the peer keys
        options["custody"] = KeyCustody.from_settings(options.get("settings") or get_settings())
    # From before the coverage is read until the last batch is committed.
    with ingest_lock(db):
        report = _ingest_locked(path, db, kind, vantage, options)
    report.seconds = time.perf_counter() - started
    return report


def _ingest_locked(
    path: Path, db: Database, kind: str, vantage: str, options: dict[str, Any]
) -> ReplayReport:
    key = replay_key(db, options["custody"])
    resume = resume_points(path, db, key)
    # Lines of torrents registered later are not counted now, and so not covered: run
    # the file again once they are.
    registered = registered_infohashes(db)
    with db.engine.connect() as conn:
        stored = load_coverage(conn, registered)
    overlap = ReplayOverlap(key, stored, registered)
    cursor = FileCursor(key)

    async def run() -> ReplayReport:
        async with Pipeline(db, **options) as pipeline:
            return await ingest_lines(
                cursor.read(path),
                pipeline,
                fmt=kind,
                vantage=vantage,
                cursor=cursor,
                resume_after=resume.uncovered_lines,
                overlap=overlap,
            )

    report = asyncio.run(run())
    report.resumed_lines, report.resumed_bytes = resume.lines, resume.bytes_read
    return report


__all__ = [
    "FIELDS",
    "FileCursor",
    "ReplayError",
    "ReplayReport",
    "detect_format",
    "ingest_file",
    "ingest_lines",
    "parse_lines",
    "parse_record",
    "parse_time",
    "registered_infohashes",
    "ResumePoint",
    "resume_point",
    "resume_points",
]
