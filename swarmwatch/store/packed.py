"""Packed frame counts: one frame's (key, peers, record-key sum) triples as one small blob.

A closed time-lapse frame is read whole and never by one key, so its cells and its cities
are kept as one blob each (rollups.rollup_frame_packed) instead of one row per key. The
keys (H3 cells or GeoNames ids) are sorted and stored as gaps, then all three columns are
byte-shuffled (every value's first byte, then every second byte...) and deflated: the
high bytes of gaps, counts and sums are mostly zero and deflate to almost nothing. About
4 bytes a key on the demo's frames, against about 45 for a row with its share of B-tree.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate

#: The first byte of a packed blob: its layout (a later layout gets a new number).
PACKED_V1 = 1
_HEADER = struct.Struct("<BI")  # layout, number of keys
_WIDTH = 8  # every value an int64


class PackedError(ValueError):
    """A blob that is not a packed frame (wrong layout, size or deflate stream)."""


def _int64s(values: Iterable[int] = ()) -> array[int]:
    return array("q", values)


@dataclass(slots=True)
class FrameCounts:
    """One frame's counts by key: keys ascending, peers and record-key sums parallel."""

    keys: array[int] = field(default_factory=_int64s)
    peers: array[int] = field(default_factory=_int64s)
    rks: array[int] = field(default_factory=_int64s)

    def __len__(self) -> int:
        return len(self.keys)

    def as_dict(self) -> dict[int, tuple[int, int]]:
        return dict(zip(self.keys, zip(self.peers, self.rks, strict=True), strict=True))

    @classmethod
    def from_dict(cls, counts: dict[int, tuple[int, int]]) -> FrameCounts:
        keys = sorted(counts)
        return cls(
            _int64s(keys), _int64s(counts[k][0] for k in keys), _int64s(counts[k][1] for k in keys)
        )


def sum_triples(parts: Iterable[Iterable[tuple[int, int, int]]]) -> dict[int, list[int]]:
    """(key, peers, rk) triples of several parts, summed per key: {key: [peers, rk]}."""
    out: dict[int, list[int]] = {}
    for part in parts:
        for key, n, rk in part:
            got = out.get(key)
            if got is None:
                out[key] = [n, rk]
            else:
                got[0] += n
                got[1] += rk
    return out


def merge_counts(parts: Iterable[Iterable[tuple[int, int, int]]]) -> FrameCounts:
    """(key, peers, rk) triples of several parts (a blob's, rows'), summed per key.

    Keys whose sums are both 0 are dropped, as a row that only ever got zeros
    counts nothing."""
    out = sum_triples(parts)
    return FrameCounts.from_dict({k: (v[0], v[1]) for k, v in out.items() if v[0] or v[1]})


def triples(counts: FrameCounts) -> Iterable[tuple[int, int, int]]:
    return zip(counts.keys, counts.peers, counts.rks, strict=True)


def pack(counts: FrameCounts) -> bytes:
    """The blob of one frame's counts (keys must be ascending and distinct)."""
    n = len(counts.keys)
    keys = counts.keys
    gaps = _int64s(keys[:1])
    gaps.extend([b - a for a, b in zip(keys, keys[1:], strict=False)])
    columns = gaps + counts.peers + counts.rks
    if sys.byteorder != "little":
        columns.byteswap()
    raw = columns.tobytes()
    shuffled = b"".join(raw[i::_WIDTH] for i in range(_WIDTH))
    return _HEADER.pack(PACKED_V1, n) + zlib.compress(shuffled, 6)


def unpack(blob: bytes) -> FrameCounts:
    """pack()'s inverse; PackedError for anything pack() cannot have written."""
    if len(blob) < _HEADER.size:
        raise PackedError("packed frame too short")
    layout, n = _HEADER.unpack_from(blob)
    if layout != PACKED_V1:
        raise PackedError(f"unknown packed frame layout {layout}")
    size = 3 * n * _WIDTH
    try:
        inflater = zlib.decompressobj()
        shuffled = inflater.decompress(blob[_HEADER.size :], size + 1)
    except zlib.error as exc:
        raise PackedError(f"packed frame is not a deflate stream: {exc}") from None
    if len(shuffled) != size or not inflater.eof or inflater.unused_data:
        raise PackedError("packed frame holds the wrong number of values")
    raw = bytearray(size)
    step = 3 * n
    for i in range(_WIDTH):
        raw[i::_WIDTH] = shuffled[i * step : (i + 1) * step]
    columns = _int64s()
    columns.frombytes(bytes(raw))
    if sys.byteorder != "little":
        columns.byteswap()
    keys = _int64s(accumulate(columns[:n]))
    return FrameCounts(keys, columns[n : 2 * n], columns[2 * n :])


__all__ = [
    "PACKED_V1",
    "FrameCounts",
    "PackedError",
    "merge_counts",
    "pack",
    "sum_triples",
    "triples",
    "unpack",
]
