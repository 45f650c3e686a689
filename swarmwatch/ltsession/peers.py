"""What a connected peer tells us: how it was learnt, seed or leech, which client.

Turns libtorrent peer_info snapshots into PeerSightings, and keeps the per-round
dedupe so a peer that stays connected is sighted once per round, not once per poll.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from swarmwatch.sightings import IPAddress, PeerSighting, Source

# libtorrent peer_info::source bits (peer_source_flags_t). Spelled out here
# because the Python binding exposes some of them only under colliding names.
PEER_SOURCE_TRACKER = 0x01
PEER_SOURCE_DHT = 0x02
PEER_SOURCE_PEX = 0x04  # BEP 11 peer exchange
PEER_SOURCE_LSD = 0x08
PEER_SOURCE_RESUME_DATA = 0x10  # also magnet x.pe peers and connect_peer()
PEER_SOURCE_INCOMING = 0x20

# libtorrent peer_info::flags bits.
PEER_FLAG_LOCAL_CONNECTION = 0x20  # we dialled it: its port is its listen port
PEER_FLAG_HANDSHAKE = 0x40  # still waiting for the BitTorrent handshake
PEER_FLAG_CONNECTING = 0x80  # TCP connect not finished
PEER_FLAG_SEED = 0x400

_DISCOVERY = (
    (PEER_SOURCE_TRACKER, Source.TRACKER),
    (PEER_SOURCE_DHT, Source.DHT),
    (PEER_SOURCE_PEX, Source.PEX),
)


def sources_of(source_flags: int) -> list[Source]:
    """Every way the session learnt of a peer; SWARM when none of tracker/DHT/PEX.

    A peer learnt from a tracker and from PEX is sighted once per source, so
    per-source counts stay honest; unique-peer counts are unaffected.
    """
    found = [source for bit, source in _DISCOVERY if source_flags & bit]
    return found or [Source.SWARM]


@dataclass(frozen=True, slots=True)
class ConnectedPeer:
    """The part of a libtorrent peer_info a crawler keeps (in memory only)."""

    ip: IPAddress = field(repr=False)
    port: int = field(repr=False)
    sources: tuple[Source, ...]
    seed: bool | None  # None: the peer has shown no pieces (yet)
    client: str | None
    incoming: bool = False  # it dialled us: port is its ephemeral one, not a listen port


def seed_state(flags: int, progress_ppm: int) -> bool | None:
    """True: has every piece; False: some but not all; None: has shown none.

    progress as well as the flag: a peer with every piece is a seed even before
    libtorrent has classified it. Before our metadata, progress is always 0.
    """
    if flags & PEER_FLAG_SEED or progress_ppm >= 1_000_000:
        return True
    if progress_ppm > 0:
        return False
    return None


def connected_peers(
    infos: Iterable[Any], own: set[tuple[IPAddress, int]]
) -> Iterator[ConnectedPeer]:
    """Peers past the handshake, from handle.get_peer_info(); never ourselves."""
    for p in infos:
        if p.flags & (PEER_FLAG_HANDSHAKE | PEER_FLAG_CONNECTING):
            continue  # not yet known to be a peer of this swarm (or any)
        try:
            ip = ipaddress.ip_address(p.ip[0])
        except ValueError:
            continue  # i2p and other non-IP endpoints
        port = int(p.ip[1])
        if (ip, port) in own:
            continue  # a tracker handing our own announce back to us
        raw = p.client
        client = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        yield ConnectedPeer(
            ip,
            port,
            tuple(sources_of(p.source)),
            seed_state(p.flags, p.progress_ppm),
            client or None,
            incoming=not p.flags & PEER_FLAG_LOCAL_CONNECTION,
        )


class SeedStateGate:
    """Holds a peer back while its seed state is unknown.

    A peer's state is known once it has shown pieces: all of them (a seed, or a
    HAVE ALL, BEP 6) or some (a leecher). A peer showing none is either a fresh
    leecher or one whose bitfield has not reached us yet: a seed that rations its
    upload queues its bitfield behind payload, so right after the handshake it
    looks empty for a while (seen here: 0.7 s at 16 KiB/s). Such a peer is
    reported as soon as its state is known, or with seed state None when it
    leaves or the round ends: never as a guessed leecher.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[IPAddress, int], ConnectedPeer] = {}

    def poll(self, peers: Iterable[ConnectedPeer]) -> list[ConnectedPeer]:
        """The peers whose sighting is due after this poll."""
        due: list[ConnectedPeer] = []
        current: set[tuple[IPAddress, int]] = set()
        for peer in peers:
            key = (peer.ip, peer.port)
            current.add(key)
            if peer.seed is None:
                self._pending[key] = peer
            else:
                self._pending.pop(key, None)
                due.append(peer)
        for key in [k for k in self._pending if k not in current]:
            due.append(self._pending.pop(key))
        return due

    def flush(self) -> list[ConnectedPeer]:
        """At a round's end: the peers still held back, with seed state unknown."""
        due = list(self._pending.values())
        self._pending.clear()
        return due


class RoundDedupe:
    """Which (torrent, peer address, seed) were already sent this round.

    Cleared at each round: a peer still connected is sighted again, as alpha60's
    30 s re-announce would have seen it again. A change of seed state is news.
    The port is not part of the key: a peer connected both ways (it dialled us from
    an ephemeral port, we dialled its listen port) is one peer in the round.
    """

    def __init__(self) -> None:
        self._sent: set[tuple[str, IPAddress, bool | None]] = set()

    def first(self, sighting: PeerSighting) -> bool:
        key = (sighting.infohash, sighting.ip, sighting.seed)
        if key in self._sent:
            return False
        self._sent.add(key)
        return True

    def clear(self) -> None:
        self._sent.clear()

    def __len__(self) -> int:
        return len(self._sent)


def sightings_of(
    peer: ConnectedPeer, infohash: str, vantage: str, seen_at: datetime
) -> Iterator[PeerSighting]:
    """One SWARM sighting: the session saw the peer, however libtorrent learnt of it.

    Labelling it tracker/PEX/DHT by how libtorrent learnt it mixed the session into
    those crawlers' counts; how it was learnt stays as detail (learnt).
    """
    yield PeerSighting(
        infohash=infohash,
        ip=peer.ip,
        port=peer.port,
        source=Source.SWARM,
        vantage=vantage,
        seen_at=seen_at,
        seed=peer.seed,
        client=peer.client,
        learnt=tuple(s for s in peer.sources if s is not Source.SWARM),
    )


__all__ = [
    "PEER_FLAG_LOCAL_CONNECTION",
    "PEER_SOURCE_DHT",
    "PEER_SOURCE_INCOMING",
    "PEER_SOURCE_LSD",
    "PEER_SOURCE_PEX",
    "PEER_SOURCE_RESUME_DATA",
    "PEER_SOURCE_TRACKER",
    "ConnectedPeer",
    "RoundDedupe",
    "SeedStateGate",
    "connected_peers",
    "seed_state",
    "sightings_of",
    "sources_of",
]
