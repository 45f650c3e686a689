"""The typed rows the pipeline hands the store: placed, keyed sightings and replay marks.

Its own module so the writer and the rollup upkeep share it without importing each other.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from swarmwatch.store.coverage import ReplayLedger


class SightingRow(NamedTuple):
    """One placed, keyed sighting as the writer takes it: the contract between the
    pipeline, the writer and the rollup upkeep (the AnonymousSighting fields without
    new_peer, which the writer decides). A NamedTuple, not a dataclass: a batch holds
    thousands, and a tuple is the cheapest object to make, hash and bind."""

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


__all__ = ["ReplayMark", "SightingRow"]
