"""What every crawler yields: one peer address seen in one swarm at one time.

A PeerSighting holds a raw IP, so it lives only in memory between a crawler and
the pipeline (DESIGN.md, privacy model). Its repr never shows the address.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Source(enum.StrEnum):
    """How a peer became known to us."""

    TRACKER = "tracker"
    DHT = "dht"
    PEX = "pex"
    SWARM = "swarm"  # the libtorrent swarm session: a peer it connected to or looked up
    REPLAY = "replay"  # `swarmwatch ingest` of data collected elsewhere


@dataclass(frozen=True, slots=True)
class PeerSighting:
    """One peer address learnt from one swarm. Never persisted as such."""

    infohash: str  # hex v1 (40) or v2 (64) infohash, lower case
    ip: IPAddress = field(repr=False)
    port: int = field(repr=False)
    source: Source
    vantage: str
    seen_at: datetime  # timezone-aware UTC
    seed: bool | None = None  # None: unknown
    client: str | None = None  # peer's client name, where a session saw it
    # How the swarm session learnt of the peer (tracker, DHT, PEX), as detail: its
    # source is SWARM whatever libtorrent learnt it from. Not stored.
    learnt: tuple[Source, ...] = ()

    def __str__(self) -> str:  # never show the address in a log line
        return f"PeerSighting({self.infohash[:8]}…, {self.source}, {self.seen_at.isoformat()})"


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One announce, DHT lookup or swarm poll: what was asked and what came back.

    The writer stores it as a `sample` row and, for tracker samples, updates the
    tracker row's interval/min_interval/failure state from it.
    """

    infohash: str
    source: Source
    vantage: str
    started_at: datetime
    finished_at: datetime | None = None
    peers_returned: int = 0
    seeders: int | None = None  # scrape complete, or BEP 33 BFsd estimate
    leechers: int | None = None  # scrape incomplete, or BEP 33 BFpe estimate
    tracker_url: str | None = None
    interval: int | None = None
    min_interval: int | None = None
    error: str | None = None  # a counted failure; never contains a peer address
    # Swarm rounds: peers known and reachable; peers_returned / known_peers is coverage.
    known_peers: int | None = None


@dataclass(frozen=True, slots=True)
class AnonymousSighting:
    """A sighting after the pipeline: placed and keyed, the address gone.

    This is what the writer stores (table `sighting`) and what ingest-time
    rollups consume. new_peer is True the first time peer_key is seen for the
    title (the writer decides it while upserting the `peer` table).
    """

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
    new_peer: bool = False


class SightingSink(Protocol):
    """Where crawlers put what they learn. put() may wait: that is the back-pressure."""

    async def put(self, sighting: PeerSighting) -> None: ...

    async def put_sample(self, sample: SampleRecord) -> None: ...


class MemorySink:
    """A sink that keeps everything in memory, for tests and benchmarks. Never persists."""

    def __init__(self, maxsize: int = 0) -> None:
        self.sightings: list[PeerSighting] = []
        self.samples: list[SampleRecord] = []
        self._changed = asyncio.Event()

    async def put(self, sighting: PeerSighting) -> None:
        self.sightings.append(sighting)
        self._changed.set()

    async def put_sample(self, sample: SampleRecord) -> None:
        self.samples.append(sample)
        self._changed.set()

    def addresses(self, infohash: str | None = None) -> set[IPAddress]:
        return {s.ip for s in self.sightings if infohash is None or s.infohash == infohash}


__all__ = [
    "AnonymousSighting",
    "IPAddress",
    "MemorySink",
    "PeerSighting",
    "SampleRecord",
    "SightingSink",
    "Source",
]
