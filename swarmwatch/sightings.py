"""What every crawler yields: one peer address seen in one swarm at one time.

A PeerSighting holds a raw IP, so it lives only in memory between a crawler and
the pipeline (DESIGN.md, privacy model). Its repr never shows the address.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Source(enum.StrEnum):
    """How a peer became known to us."""

    TRACKER = "tracker"
    DHT = "dht"
    PEX = "pex"
    SWARM = "swarm"  # a peer the libtorrent session connected to or was told of directly
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

    def __str__(self) -> str:  # never show the address in a log line
        return f"PeerSighting({self.infohash[:8]}…, {self.source}, {self.seen_at.isoformat()})"


__all__ = ["IPAddress", "PeerSighting", "Source"]
