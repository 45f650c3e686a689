"""Peer lists as trackers send them: compact (BEP 23), compact IPv6 (BEP 7) and dicts (BEP 3).

Parsers raise TrackerResponseError on structural faults (a length that is not
a multiple of the entry size, wrong types); single unusable entries are skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from swarmwatch.sightings import IPAddress
from swarmwatch.tracker.exceptions import TrackerResponseError

#: BEP 23: 4-byte IPv4 address + 2-byte port, network byte order.
COMPACT_PEER_V4_LEN = 6
#: BEP 7: 16-byte IPv6 address + 2-byte port.
COMPACT_PEER_V6_LEN = 18

Peer = tuple[IPAddress, int]


def parse_compact_peers(data: bytes, *, ipv6: bool = False) -> list[Peer]:
    """Decode a compact peer string; port-0 entries are kept for the caller to judge."""
    size = COMPACT_PEER_V6_LEN if ipv6 else COMPACT_PEER_V4_LEN
    if len(data) % size:
        raise TrackerResponseError(
            f"compact peer list of {len(data)} bytes is not a multiple of {size}"
        )
    alen = size - 2
    out: list[Peer] = []
    make = ipaddress.IPv6Address if ipv6 else ipaddress.IPv4Address
    for off in range(0, len(data), size):
        ip = make(data[off : off + alen])
        port = int.from_bytes(data[off + alen : off + size], "big")
        out.append((ip, port))
    return out


def encode_compact_peers(peers: Iterable[Peer], *, ipv6: bool = False) -> bytes:
    """The inverse of parse_compact_peers (the simulated trackers use it)."""
    want = 6 if ipv6 else 4
    parts = []
    for ip, port in peers:
        if ip.version != want:
            raise ValueError("address family does not match the list")
        parts.append(ip.packed + port.to_bytes(2, "big"))
    return b"".join(parts)


def parse_dict_peers(items: Any) -> tuple[list[Peer], int]:
    """Decode a BEP 3 list of {ip, port, peer id} dicts; returns (peers, skipped).

    `ip` may legally be a DNS name: such entries are skipped, never resolved,
    since resolving a name a tracker hands us could send a packet anywhere.
    """
    if not isinstance(items, list):
        raise TrackerResponseError("peers is neither a string nor a list")
    out: list[Peer] = []
    skipped = 0
    for item in items:
        if not isinstance(item, dict):
            raise TrackerResponseError("peer entry is not a dict")
        raw_ip, port = item.get(b"ip"), item.get(b"port")
        if not isinstance(raw_ip, bytes) or not isinstance(port, int):
            raise TrackerResponseError("peer entry lacks ip or port")
        if not 0 <= port <= 0xFFFF:
            raise TrackerResponseError("peer port out of range")
        try:
            ip = ipaddress.ip_address(raw_ip.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            skipped += 1
            continue
        out.append((ip, port))
    return out, skipped


__all__ = [
    "COMPACT_PEER_V4_LEN",
    "COMPACT_PEER_V6_LEN",
    "Peer",
    "encode_compact_peers",
    "parse_compact_peers",
    "parse_dict_peers",
]
