"""Node ids: XOR distance (BEP 5) and the BEP 42 rule tying a node id to its IP.

We derive our own id per BEP 42 once we know our external address, and only
count (never reject) other nodes whose ids break the rule.
"""

from __future__ import annotations

import ipaddress
import os

from swarmwatch.dht.krpc import NODE_ID_LENGTH

#: BEP 42: masks applied to the IPv4 / IPv6 address before hashing.
BEP42_V4_MASK = bytes([0x03, 0x0F, 0x3F, 0xFF])
BEP42_V6_MASK = bytes([0x01, 0x03, 0x07, 0x0F, 0x1F, 0x3F, 0x7F, 0xFF])

#: CRC32-C (Castagnoli), reflected polynomial, as BEP 42 specifies.
CRC32C_POLY = 0x82F63B78


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def distance(a: bytes, b: bytes) -> int:
    """BEP 5 XOR metric."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def random_node_id() -> bytes:
    return os.urandom(NODE_ID_LENGTH)


def _bep42_prefix(ip: str, rand: int) -> int:
    packed = ipaddress.ip_address(ip).packed
    mask = BEP42_V4_MASK if len(packed) == 4 else BEP42_V6_MASK
    masked = bytearray(a & m for a, m in zip(packed, mask, strict=False))
    masked[0] |= (rand & 0x07) << 5
    return crc32c(bytes(masked))


def bep42_exempt(ip: str) -> bool:
    """BEP 42 does not apply to local, private or loopback addresses."""
    addr = ipaddress.ip_address(ip)
    return addr.is_private or addr.is_loopback or addr.is_link_local or not addr.is_global


def bep42_node_id(ip: str, rand: int | None = None) -> bytes:
    """A node id whose first 21 bits follow BEP 42 for ip; the last byte is rand."""
    r = os.urandom(1)[0] if rand is None else rand & 0xFF
    crc = _bep42_prefix(ip, r)
    tail = bytearray(os.urandom(NODE_ID_LENGTH - 3))
    head = bytes([(crc >> 24) & 0xFF, (crc >> 16) & 0xFF, ((crc >> 8) & 0xF8) | (tail[0] & 0x07)])
    return head + bytes(tail[1:]) + bytes([r])


def bep42_valid(node_id: bytes, ip: str) -> bool:
    """True if node_id follows BEP 42 for ip, or ip is exempt from the rule."""
    if bep42_exempt(ip):
        return True
    if len(node_id) != NODE_ID_LENGTH:
        return False
    crc = _bep42_prefix(ip, node_id[-1])
    return (
        node_id[0] == (crc >> 24) & 0xFF
        and node_id[1] == (crc >> 16) & 0xFF
        and (node_id[2] & 0xF8) == ((crc >> 8) & 0xF8)
    )


__all__ = [
    "bep42_exempt",
    "bep42_node_id",
    "bep42_valid",
    "crc32c",
    "distance",
    "random_node_id",
]
