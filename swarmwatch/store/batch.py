"""The typed batch the pipeline hands the store: placed, keyed sightings as columns, and
replay marks.

Its own module so the writer and the rollup upkeep share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, overload

if TYPE_CHECKING:
    from swarmwatch.store.coverage import ReplayLedger


class SightingRow(NamedTuple):
    """One placed, keyed sighting (the AnonymousSighting fields without new_peer, which
    the writer decides): a row of SightingColumns, for callers that add a few at a time."""

    study_id: int
    title_id: int
    torrent_id: int
    peer_key: bytes
    seen_at: datetime
    source: str
    vantage: str
    seed: bool | None
    country: str | None
    geoname_id: int | None
    metro_id: int | None
    h3_cell: int | None  # H3 cell at the pipeline's base resolution
    asn: int | None


@dataclass(slots=True)
class SightingColumns:
    """A batch of placed, keyed sightings, one list per SightingRow field: the contract
    between the pipeline, the writer and the rollup upkeep.

    Columns, not a row object per sighting: the writer and the rollups read a field
    across the whole batch (one zip or Counter over a list), and a batch of thousands
    of tuples was thousands of objects for the garbage collector to track and traverse.
    Every column has the same length.
    """

    study_id: list[int] = field(default_factory=list)
    title_id: list[int] = field(default_factory=list)
    torrent_id: list[int] = field(default_factory=list)
    peer_key: list[bytes] = field(default_factory=list)
    seen_at: list[datetime] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    vantage: list[str] = field(default_factory=list)
    seed: list[bool | None] = field(default_factory=list)
    country: list[str | None] = field(default_factory=list)
    geoname_id: list[int | None] = field(default_factory=list)
    metro_id: list[int | None] = field(default_factory=list)
    h3_cell: list[int | None] = field(default_factory=list)  # at the base resolution
    asn: list[int | None] = field(default_factory=list)

    def columns(self) -> tuple[list[object], ...]:
        """The columns in SightingRow's field order."""
        return tuple(getattr(self, f) for f in SightingRow._fields)

    def __len__(self) -> int:
        return len(self.peer_key)

    def __bool__(self) -> bool:
        return bool(self.peer_key)

    def append(self, row: SightingRow) -> None:
        for column, value in zip(self.columns(), row, strict=True):
            column.append(value)

    def extend(self, rows: Iterable[SightingRow]) -> None:
        for row in rows:
            self.append(row)

    @classmethod
    def of(cls, rows: Iterable[SightingRow]) -> SightingColumns:
        out = cls()
        out.extend(rows)
        return out

    def row(self, i: int) -> SightingRow:
        return SightingRow._make(column[i] for column in self.columns())

    def __iter__(self) -> Iterator[SightingRow]:
        return map(SightingRow._make, zip(*self.columns(), strict=True))

    @overload
    def __getitem__(self, i: int) -> SightingRow: ...
    @overload
    def __getitem__(self, i: slice) -> SightingColumns: ...
    def __getitem__(self, i: int | slice) -> SightingRow | SightingColumns:
        if isinstance(i, slice):
            return SightingColumns(*(column[i] for column in self.columns()))  # type: ignore[arg-type]
        return self.row(i)


class ReplayMark(NamedTuple):
    """How far into a replayed file the sightings before it reach (`swarmwatch ingest`).

    Stored in the transaction of the batch that holds those sightings, so a file run
    again resumes exactly after what was committed, whatever interrupted it.
    """

    digest: bytes  # keyed BLAKE2b of the file's bytes up to the end of line `lines`
    bytes_read: int
    lines: int
    # Which minutes of which streams those sightings cover (store.coverage): the
    # ingest's decisions up to `position` in its ledger, written with them.
    ledger: ReplayLedger | None = None
    position: int = 0


__all__ = ["ReplayMark", "SightingColumns", "SightingRow"]
