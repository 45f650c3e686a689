"""BEP 33 scrape bloom filters: the BFsd/BFpe a node returns, their union and size estimate.

Filters from several nodes near an infohash are OR-ed together before the
estimate, which is how BEP 33 counts a swarm spread over many nodes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math

from swarmwatch.dht.krpc import BLOOM_FILTER_LENGTH

#: BEP 33: m = 2048 bits, k = 2 hash functions.
BLOOM_BITS = BLOOM_FILTER_LENGTH * 8
BLOOM_HASHES = 2


class ScrapeBloom:
    """A 2048-bit BEP 33 bloom filter of peer IPs (ports are not part of it)."""

    __slots__ = ("bits",)

    def __init__(self, raw: bytes | None = None) -> None:
        if raw is not None and len(raw) != BLOOM_FILTER_LENGTH:
            raise ValueError("a BEP 33 bloom filter is 256 bytes")
        self.bits = bytearray(raw or bytes(BLOOM_FILTER_LENGTH))

    def add(self, ip: str) -> None:
        # BEP 33: SHA-1 of the raw IP bytes; indices are the first two
        # little-endian 16-bit words of the digest, modulo m.
        digest = hashlib.sha1(ipaddress.ip_address(ip).packed).digest()
        for i in range(BLOOM_HASHES):
            index = (digest[2 * i] | digest[2 * i + 1] << 8) % BLOOM_BITS
            self.bits[index // 8] |= 1 << (index % 8)

    def union(self, other: bytes | ScrapeBloom) -> None:
        raw = other.bits if isinstance(other, ScrapeBloom) else other
        if len(raw) != BLOOM_FILTER_LENGTH:
            raise ValueError("a BEP 33 bloom filter is 256 bytes")
        for i, b in enumerate(raw):
            self.bits[i] |= b

    def estimate(self) -> float:
        """BEP 33: n = ln(c / m) / (k * ln(1 - 1/m)), c = zero bits (at least 1)."""
        zeros = BLOOM_BITS - sum(b.bit_count() for b in self.bits)
        c = min(max(zeros, 1), BLOOM_BITS - 1) if zeros < BLOOM_BITS else BLOOM_BITS
        if c == BLOOM_BITS:
            return 0.0
        return math.log(c / BLOOM_BITS) / (BLOOM_HASHES * math.log(1 - 1 / BLOOM_BITS))

    def to_bytes(self) -> bytes:
        return bytes(self.bits)


__all__ = ["BLOOM_BITS", "BLOOM_HASHES", "ScrapeBloom"]
