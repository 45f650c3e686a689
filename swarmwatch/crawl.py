"""The crawler interface: every way of finding peers is a Crawler.

A Crawler watches the torrents a TorrentSource names and puts PeerSightings
and SampleRecords into a SightingSink; the pipeline never knows which crawler
produced a sighting (DESIGN.md, data flow).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from swarmwatch.sightings import SightingSink


@dataclass(frozen=True, slots=True)
class WatchedTorrent:
    """A registered swarm as crawlers see it."""

    infohash_v1: str | None
    infohash_v2: str | None
    trackers: tuple[tuple[str, int], ...] = ()  # (announce URL, BEP 12 tier)
    magnet: str | None = None
    info: bytes | None = field(default=None, repr=False)  # bencoded info dict, when known

    @property
    def infohash(self) -> str:
        return self.infohash_v1 or self.infohash_v2 or ""


#: Called by a crawler each round for the current list of swarms to watch.
TorrentSource = Callable[[], Awaitable[list[WatchedTorrent]]]


class Crawler(Protocol):
    """A way of finding peers (tracker, DHT, libtorrent swarm session)."""

    name: str

    async def run(self, torrents: TorrentSource, sink: SightingSink, stop: asyncio.Event) -> None:
        """Crawl until stop is set; errors from the network are counted, never raised."""
        ...

    async def aclose(self) -> None:
        """Release sockets and sessions once run() has returned for good."""
        ...


def static_torrents(items: list[WatchedTorrent]) -> TorrentSource:
    """A TorrentSource over a fixed list (tests, benchmarks, the demo before registration)."""

    async def source() -> list[WatchedTorrent]:
        return list(items)

    return source


__all__ = ["Crawler", "TorrentSource", "WatchedTorrent", "static_torrents"]
