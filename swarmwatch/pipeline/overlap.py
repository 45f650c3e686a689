"""Which replayed sightings an earlier ingest already counted, whatever the overlap.

A replay file is read as streams, one per (infohash, source, vantage): a swarm as one
source and vantage saw it, in time order. Each stream is cut into minutes (slots, the
pipeline's coalescing window). Reading a stream in order, the ingest knows that once
it has moved two minutes past a slot it entered from an earlier one, it has read every
line of that slot: the slot is counted in full (a span). Slots where a file begins or
ends are counted in part: those keep keyed digests of the sightings counted in them
(edges). A later file, overlapping in any way (the same file, a longer or rotated log,
a copy cut elsewhere, a merge of vantages), skips the lines of spans and the sightings
of edges it would count again; what it adds is stored with its batches (store.coverage).

Two rules make that exact:
- A sighting is what the pipeline would store once: one peer (address and seed state)
  in one stream and minute. A repeat in the same minute is a repeat, in one file or
  across files, as the pipeline's coalescing makes it within one run.
- Lines must come in time order per stream, give or take a minute: a line older than
  the minute before the newest its stream has reached in this file is *late*, and is
  not counted (reported, so a file out of order is sorted and run again: what it
  counted before is skipped then). A file read in this order always leaves the same
  numbers, however it is split, repeated or interrupted.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from swarmwatch.sightings import PeerSighting
from swarmwatch.store.coverage import (
    DIGEST_BYTES,
    SLOT_SECONDS,
    ReplayLedger,
    Span,
    StoredStream,
    StreamKey,
    add_span,
    in_spans,
    spans_cover,
)

_SEED = {None: b"\0", False: b"\1", True: b"\2"}


class Verdict(enum.Enum):
    COUNT = "count"  # new: put into the pipeline
    REPEAT = "repeat"  # the same sighting earlier in this minute of this file
    ALREADY = "already"  # counted by an earlier ingest
    LATE = "late"  # out of time order by more than a minute: not counted


@dataclass(slots=True)
class _Stream:
    key: StreamKey
    hasher: hashlib.blake2b  # keyed, with the stream's name in it
    prior: list[Span]  # spans as stored when this ingest started
    spans: list[Span]  # the same with this ingest's
    stored: dict[int, set[bytes]]  # edge digests stored when this ingest started
    mine: dict[int, set[bytes]] = field(default_factory=dict)  # counted now, open slots
    low: int | None = None  # the first slot this ingest read
    newest: int | None = None  # the newest slot this ingest read


class ReplayOverlap:
    """Decides, line by line, whether a replayed sighting is new, and records what it
    counts in a ReplayLedger (written with the batches that hold the sightings).

    `key` keys the digests (the store's replay key, under custody): a digest of an
    address and a minute that anyone could compute would be the address itself, as
    far as a copy of the database goes. Each digest also hashes its stream and slot,
    so no two rows share one for the same peer.
    """

    def __init__(
        self,
        key: bytes,
        stored: dict[StreamKey, StoredStream],
        registered: Iterable[str],
    ) -> None:
        self._base = hashlib.blake2b(key=key, digest_size=DIGEST_BYTES, person=b"sw-replay-line")
        self._stored = stored
        self.registered = frozenset(registered)
        self.ledger = ReplayLedger(stored)
        self._streams: dict[StreamKey, _Stream] = {}

    def _stream(self, key: StreamKey) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            hasher = self._base.copy()
            hasher.update("\0".join(key).encode() + b"\0")
            got = self._stored.get(key) or StoredStream()
            stream = _Stream(key, hasher, list(got.spans), list(got.spans), got.edges)
            self._streams[key] = stream
        return stream

    def verdict(self, sighting: PeerSighting) -> Verdict:
        stream = self._stream((sighting.infohash, str(sighting.source), sighting.vantage))
        # The pipeline's coalescing window, computed as it does.
        slot = int(sighting.seen_at.timestamp()) // SLOT_SECONDS
        if stream.newest is None:
            stream.low = stream.newest = slot
        elif slot > stream.newest:
            self._move_on(stream, slot)
        elif slot < stream.newest - 1:
            if in_spans(stream.prior, slot):
                return Verdict.ALREADY
            stored = stream.stored.get(slot)
            if stored and self._digest(stream, slot, sighting) in stored:
                return Verdict.ALREADY
            return Verdict.LATE
        if in_spans(stream.spans, slot):
            return Verdict.ALREADY
        digest = self._digest(stream, slot, sighting)
        stored = stream.stored.get(slot)
        if stored and digest in stored:
            return Verdict.ALREADY
        mine = stream.mine.get(slot)
        if mine is None:
            mine = stream.mine[slot] = set()
        elif digest in mine:
            return Verdict.REPEAT
        mine.add(digest)
        self.ledger.edge(stream.key, slot, digest)
        return Verdict.COUNT

    @staticmethod
    def _digest(stream: _Stream, slot: int, sighting: PeerSighting) -> bytes:
        """The sighting's keyed digest: its address (as the pipeline keys it, an IPv4
        mapped into IPv6 as the IPv4) and seed state, in its stream and slot."""
        ip = sighting.ip
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        h = stream.hasher.copy()
        h.update(slot.to_bytes(8, "big", signed=True) + ip.packed + _SEED[sighting.seed])
        return h.digest()

    def _move_on(self, stream: _Stream, slot: int) -> None:
        """The stream's newest slot becomes `slot`: the slots this ingest entered from an
        earlier one and is now two past are read in full (a late line for them is late)."""
        assert stream.low is not None and stream.newest is not None
        lo, hi = max(stream.low + 1, stream.newest - 1), slot - 2
        stream.newest = slot
        if lo > hi:
            return
        for old in [s for s in stream.mine if lo <= s <= hi]:
            del stream.mine[old]
        spans = stream.spans
        if spans and spans[-1][0] <= lo <= spans[-1][1] + 1:
            # The common case: this ingest's own span grows (it is the latest one).
            if hi <= spans[-1][1]:
                return
            spans[-1] = (spans[-1][0], hi)
        elif spans_cover(spans, lo, hi):
            return
        else:
            stream.spans = add_span(spans, lo, hi)
        self.ledger.full(stream.key, lo, hi)


__all__ = ["ReplayOverlap", "Verdict"]
