"""The tracker client interface: one Protocol, HTTP and UDP behind it, results as dataclasses.

The crawler depends only on TrackerClient; AnnounceResult and ScrapeResult are
what every implementation returns.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from swarmwatch.sightings import IPAddress

#: Peer id prefix in the Azureus style (BEP 20): "SW" client, version 0.1.
PEER_ID_PREFIX = b"-SW0100-"
#: The most compact peers 1 MiB can hold (6 bytes each): a sanity cap on numwant.
MAX_NUMWANT = 10_000


class Event(enum.IntEnum):
    """Announce events with their BEP 15 numbers; HTTP uses the names (BEP 3)."""

    NONE = 0
    COMPLETED = 1
    STARTED = 2
    STOPPED = 3

    @property
    def http_name(self) -> str:
        return "" if self is Event.NONE else self.name.lower()


@dataclass(frozen=True, slots=True)
class CrawlIdentity:
    """Who the crawler claims to be to a tracker: a fresh peer_id and key per identity.

    The key (BEP 7/15) lets a tracker recognise us across IP changes; a fresh
    identity per crawl keeps one study's crawl unlinkable to another's.
    """

    peer_id: bytes = field(repr=False)
    key: int
    port: int = 6881

    @classmethod
    def fresh(cls, port: int = 6881) -> CrawlIdentity:
        return cls(PEER_ID_PREFIX + secrets.token_bytes(12), secrets.randbits(32), port)


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    """What one announce returned. peers is hidden from repr: raw addresses."""

    interval: int
    min_interval: int | None = None
    seeders: int | None = None
    leechers: int | None = None
    peers: tuple[tuple[IPAddress, int], ...] = field(default=(), repr=False)
    warning: str | None = None
    tracker_id: bytes | None = field(default=None, repr=False)
    skipped: int = 0  # peer entries dropped as unusable (hostnames, port 0)
    # Our own address as the tracker saw it (BEP 24 "external ip"), and the local
    # address we sent from: the tracker may list us at either (ownendpoints).
    external_ip: IPAddress | None = field(default=None, repr=False)
    local_ip: IPAddress | None = field(default=None, repr=False)

    @property
    def peer_count(self) -> int:
        return len(self.peers)


@dataclass(frozen=True, slots=True)
class ScrapeStats:
    complete: int  # seeders
    incomplete: int  # leechers
    downloaded: int


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    files: dict[bytes, ScrapeStats]  # 20-byte infohash -> counts

    def get(self, infohash: bytes) -> ScrapeStats | None:
        return self.files.get(infohash)


class TrackerClient(Protocol):
    """Announce and scrape against one kind of tracker URL (http(s):// or udp://)."""

    async def announce(
        self,
        url: str,
        infohash: bytes,
        identity: CrawlIdentity,
        *,
        numwant: int = 200,
        event: Event = Event.NONE,
        left: int = 1,
    ) -> AnnounceResult:
        """One announce; raises a TrackerError or netsafety.DestinationRefused."""
        ...

    async def scrape(self, url: str, infohashes: Sequence[bytes]) -> ScrapeResult:
        """One scrape (BEP 48 / BEP 15); raises a TrackerError or DestinationRefused."""
        ...

    async def aclose(self) -> None: ...


__all__ = [
    "MAX_NUMWANT",
    "PEER_ID_PREFIX",
    "AnnounceResult",
    "CrawlIdentity",
    "Event",
    "ScrapeResult",
    "ScrapeStats",
    "TrackerClient",
]
