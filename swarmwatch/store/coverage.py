"""Stored coverage of replayed streams: which minutes of a swarm's log, as one source and
vantage saw it, `swarmwatch ingest` has counted; written with the sightings counted.

A stream is (infohash, source, vantage); a slot is a minute of it (Unix time // 60, the
pipeline's coalescing window). A slot is either in a span (every line of the stream in
it is counted), an edge (counted in part, where a file began or ended: the keyed
digests of the sightings counted there, replay_edge) or not covered. The pipeline side
(pipeline.overlap) decides line by line; this module keeps what it decided in step with
the write batches, so a kill -9 leaves exactly the coverage of the committed sightings.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection

#: A slot's length: the pipeline's coalescing window (pipeline.SIGHTING_WINDOW_SECONDS),
#: so "a repeat in the same minute" means the same here as in one uninterrupted run.
SLOT_SECONDS = 60
#: Bytes of a keyed sighting digest: a false "already counted" needs two sightings of one
#: stream and minute to collide, about n² / 2⁶⁵ for n of them (10⁻¹² for a thousand).
DIGEST_BYTES = 8

StreamKey = tuple[str, str, str]  # infohash, source, vantage
Span = tuple[int, int]  # first and last slot, both included

_EDGE, _FULL = 0, 1

_INSERT_EDGE = (
    "INSERT INTO replay_edge (infohash, source, vantage, slot, part, digests)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (infohash, source, vantage, slot, part) DO UPDATE SET digests = excluded.digests"
)
_CLEAR_EDGES = (
    "DELETE FROM replay_edge WHERE infohash = ? AND source = ? AND vantage = ?"
    " AND slot BETWEEN ? AND ?"
)
_CLEAR_SPANS = "DELETE FROM replay_span WHERE infohash = ? AND source = ? AND vantage = ?"
_INSERT_SPAN = "INSERT INTO replay_span (infohash, source, vantage, lo, hi) VALUES (?, ?, ?, ?, ?)"


def add_span(spans: list[Span], lo: int, hi: int) -> list[Span]:
    """spans (sorted, disjoint) with lo..hi added; touching spans merge (slots are whole)."""
    out: list[Span] = []
    for a, b in spans:
        if b + 1 < lo or a > hi + 1:
            out.append((a, b))
        else:
            lo, hi = min(a, lo), max(b, hi)
    out.append((lo, hi))
    out.sort()
    return out


def in_spans(spans: list[Span], slot: int) -> bool:
    i = bisect_right(spans, (slot, 2**62))
    return i > 0 and spans[i - 1][1] >= slot


def spans_cover(spans: list[Span], lo: int, hi: int) -> bool:
    """Whether one span holds all of lo..hi."""
    i = bisect_right(spans, (lo, 2**62))
    return i > 0 and spans[i - 1][0] <= lo and spans[i - 1][1] >= hi


@dataclass(slots=True)
class StoredStream:
    """A stream's coverage as stored when an ingest starts."""

    spans: list[Span] = field(default_factory=list)
    edges: dict[int, set[bytes]] = field(default_factory=dict)  # slot -> digests
    parts: dict[int, int] = field(default_factory=dict)  # slot -> parts stored


def load_coverage(conn: Connection, infohashes: Iterable[str]) -> dict[StreamKey, StoredStream]:
    """The stored coverage of every stream of these swarms."""
    wanted = set(infohashes)
    streams: dict[StreamKey, StoredStream] = {}
    for ih, source, vantage, lo, hi in conn.exec_driver_sql(
        "SELECT infohash, source, vantage, lo, hi FROM replay_span ORDER BY lo"
    ):
        if ih in wanted:
            stream = streams.setdefault((ih, source, vantage), StoredStream())
            stream.spans.append((int(lo), int(hi)))
    for ih, source, vantage, slot, part, digests in conn.exec_driver_sql(
        "SELECT infohash, source, vantage, slot, part, digests FROM replay_edge"
    ):
        if ih in wanted:
            stream = streams.setdefault((ih, source, vantage), StoredStream())
            blob = bytes(digests)
            got = stream.edges.setdefault(int(slot), set())
            got.update(blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES))
            stream.parts[int(slot)] = max(stream.parts.get(int(slot), 0), int(part) + 1)
    return streams


@dataclass(frozen=True, slots=True)
class CoverageChanges:
    """What one write batch adds to the stored coverage."""

    edges: list[tuple[str, str, str, int, int, bytes]]  # stream, slot, part, digests
    cleared: list[tuple[str, str, str, int, int]]  # stream, slots now in a span
    spans: dict[StreamKey, tuple[Span, ...]]  # the whole span list of each changed stream


class ReplayLedger:
    """The coverage decisions of one ingest, in order, written with the batches.

    The reader (pipeline.overlap, on the event loop) records each decision and tags
    every replay mark with how many it had recorded then (`position`). The writer (its
    own thread) writes, in each batch's transaction, the decisions up to the batch's
    mark: the pipeline keeps only a batch's last mark, so a mark carries a position in
    this journal rather than a change of its own. One reader and one writer: a deque's
    append and popleft are atomic, and the writer only reads what a mark it holds
    says was recorded before it.
    """

    def __init__(self, stored: dict[StreamKey, StoredStream]) -> None:
        self._ops: deque[tuple[int, StreamKey, int, int | bytes]] = deque()
        self.position = 0  # decisions recorded (reader side)
        self._consumed = 0  # decisions taken into changes (writer side)
        # The writer's view of the spans and of the edge parts stored per slot.
        self._spans: dict[StreamKey, list[Span]] = {k: list(s.spans) for k, s in stored.items()}
        self._parts: dict[tuple[StreamKey, int], int] = {
            (k, slot): n for k, s in stored.items() for slot, n in s.parts.items()
        }
        self._last: tuple[int, CoverageChanges] | None = None

    # -- the reader -----------------------------------------------------------------------

    def edge(self, stream: StreamKey, slot: int, digest: bytes) -> None:
        """A sighting counted in an edge slot."""
        self._ops.append((_EDGE, stream, slot, digest))
        self.position += 1

    def full(self, stream: StreamKey, lo: int, hi: int) -> None:
        """Slots lo..hi of the stream are counted in full."""
        self._ops.append((_FULL, stream, lo, hi))
        self.position += 1

    # -- the writer -----------------------------------------------------------------------

    def changes(self, position: int) -> CoverageChanges:
        """The decisions recorded before `position` not yet taken. Asked again for the
        same position (a batch retried), the same answer."""
        if self._last is not None and self._last[0] == position:
            return self._last[1]
        digests: dict[tuple[StreamKey, int], bytearray] = {}
        # Slots made full, merged per stream: one statement clears a stream's edges
        # however many minutes it moved on by in this batch.
        full: dict[StreamKey, list[Span]] = {}
        while self._consumed < position:
            kind, stream, a, b = self._ops.popleft()
            self._consumed += 1
            if kind == _EDGE:
                assert isinstance(b, bytes)
                digests.setdefault((stream, a), bytearray()).extend(b)
            else:
                assert isinstance(b, int)
                self._spans[stream] = add_span(self._spans.get(stream, []), a, b)
                full[stream] = add_span(full.get(stream, []), a, b)
        cleared = [(*stream, lo, hi) for stream, spans in full.items() for lo, hi in spans]
        edges: list[tuple[str, str, str, int, int, bytes]] = []
        for (stream, slot), blob in digests.items():
            if in_spans(self._spans.get(stream, []), slot):
                continue  # counted in full by now: its edge rows are cleared
            part = self._parts.get((stream, slot), 0)
            self._parts[(stream, slot)] = part + 1
            edges.append((*stream, slot, part, bytes(blob)))
        result = CoverageChanges(edges, cleared, {k: tuple(self._spans[k]) for k in full})
        self._last = (position, result)
        return result

    def write(self, conn: Connection, position: int, sql: Callable[[str], str]) -> None:
        """Store the decisions before `position`, in the caller's transaction. `sql`
        turns the statements' ? placeholders into the driver's."""
        changes = self.changes(position)
        if changes.cleared:
            conn.exec_driver_sql(sql(_CLEAR_EDGES), changes.cleared)
        if changes.edges:
            conn.exec_driver_sql(sql(_INSERT_EDGE), changes.edges)
        for stream, spans in changes.spans.items():
            conn.exec_driver_sql(sql(_CLEAR_SPANS), stream)
            conn.exec_driver_sql(sql(_INSERT_SPAN), [(*stream, lo, hi) for lo, hi in spans])


__all__ = [
    "DIGEST_BYTES",
    "SLOT_SECONDS",
    "CoverageChanges",
    "ReplayLedger",
    "Span",
    "StoredStream",
    "StreamKey",
    "add_span",
    "in_spans",
    "load_coverage",
    "spans_cover",
]
