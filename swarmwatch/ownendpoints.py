"""Our own endpoints: the crawler must never count itself (or a sibling worker) as a peer.

A worker is seen by swarms at (one of its addresses, one of its ports): trackers list
the announcer itself (opentracker does), the libtorrent session's listen endpoint comes
back from trackers, PEX and the DHT. Every crawler reports its ports (tracker identity
ports, libtorrent listen ports, the DHT node's port) and addresses (bound addresses, a
tracker's BEP 24 `external ip`, libtorrent's external address) here, and
ExcludeOwnSink drops a sighting at any of them before the pipeline sees it.

Workers sharing one database exchange their endpoints as keyed 128-bit digests
(table crawl_endpoint, with a short expiry renewed by each lease heartbeat), so a
worker drops its siblings' endpoints too, at any vantage. No address is stored: the
digest is BLAKE2b of (address, port) under a random deployment key (crawl_endpoint_key).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Index, Integer, LargeBinary, String, Table, delete, select
from sqlalchemy.orm import Session

from swarmwatch.sightings import IPAddress, PeerSighting, SampleRecord, SightingSink
from swarmwatch.store.models import Base, UTCDateTime, utcnow

log = logging.getLogger(__name__)

#: 128-bit digests: a collision with a real peer's endpoint has probability ~2^-128.
DIGEST_BYTES = 16
#: Domain separation from peer keys, which are BLAKE2b of an address under a study key.
_PERSON = b"swarmwatch-own"
#: Addresses × ports a worker publishes at most: a bound on the rows one worker writes.
MAX_PUBLISHED = 4096

crawl_endpoint_key = Table(
    "crawl_endpoint_key",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("key", LargeBinary(32), nullable=False),
)

crawl_endpoint = Table(
    "crawl_endpoint",
    Base.metadata,
    Column("worker_id", String(200), primary_key=True),
    Column("digest", LargeBinary(DIGEST_BYTES), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_crawl_endpoint_expires", "expires_at"),
)


def _packed(ip: IPAddress, port: int) -> bytes:
    # An IPv4-mapped IPv6 address is the IPv4 peer it maps (dual-stack sockets show those).
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed + port.to_bytes(2, "big")


def endpoint_digest(key: bytes, ip: IPAddress, port: int) -> bytes:
    """The keyed digest of one endpoint, as workers exchange it."""
    return hashlib.blake2b(
        _packed(ip, port), key=key, digest_size=DIGEST_BYTES, person=_PERSON
    ).digest()


def _normal(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class OwnEndpoints:
    """This worker's addresses and ports, and the digests of every sibling worker's.

    An endpoint is ours when its address is one of ours and its port one of ours: a
    peer behind the same NAT as the crawler on another port is a real peer, and keeps
    being counted. Addresses and ports are kept in memory only.
    """

    def __init__(self) -> None:
        self._addresses: set[IPAddress] = set()
        self._ports: set[int] = set()
        self._key: bytes | None = None
        self._remote: frozenset[bytes] = frozenset()
        self._parts: list[OwnEndpoints] = []
        self.excluded = 0  # sightings dropped as ours (a count, for /metrics and tests)

    def include(self, part: OwnEndpoints) -> None:
        """Count another crawler's endpoints as ours too (crawlers built apart, in tests)."""
        if part is not self and part not in self._parts:
            self._parts.append(part)

    def _all_addresses(self) -> set[IPAddress]:
        return self._addresses.union(*(p._all_addresses() for p in self._parts))

    def _all_ports(self) -> set[int]:
        return self._ports.union(*(p._all_ports() for p in self._parts))

    def add_address(self, ip: IPAddress | str) -> None:
        try:
            addr = _normal(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
        except ValueError:
            return
        if not addr.is_unspecified:
            self._addresses.add(addr)

    def add_port(self, port: int) -> None:
        if 0 < port <= 0xFFFF:
            self._ports.add(int(port))

    def add(self, ip: IPAddress | str, port: int) -> None:
        self.add_address(ip)
        self.add_port(port)

    @property
    def ports(self) -> frozenset[int]:
        return frozenset(self._all_ports())

    def is_own(self, ip: IPAddress, port: int) -> bool:
        # Every port of ours at every address of ours: the tracker crawler's identity port
        # at the external address libtorrent learnt is an endpoint of ours too.
        if port in self._all_ports() and _normal(ip) in self._all_addresses():
            return True
        if self._remote and self._key is not None:
            return endpoint_digest(self._key, ip, port) in self._remote
        return False

    # -- exchange through the database ------------------------------------------------

    def digests(self, key: bytes) -> set[bytes]:
        addresses, ports = self._all_addresses(), self._all_ports()
        pairs = [(a, p) for a in sorted(addresses, key=str) for p in sorted(ports)]
        return {endpoint_digest(key, a, p) for a, p in pairs[:MAX_PUBLISHED]}

    def exchange(
        self,
        session: Session,
        worker_id: str,
        *,
        ttl_seconds: float,
        now: datetime | None = None,
    ) -> int:
        """Publish ours, learn every live worker's; returns how many digests we now know."""
        now = now or utcnow()
        key = self._key = _deployment_key(session)
        mine = self.digests(key)
        until = now + timedelta(seconds=ttl_seconds)
        session.execute(delete(crawl_endpoint).where(crawl_endpoint.c.expires_at <= now))
        session.execute(delete(crawl_endpoint).where(crawl_endpoint.c.worker_id == worker_id))
        if mine:
            session.execute(
                crawl_endpoint.insert(),
                [{"worker_id": worker_id, "digest": d, "expires_at": until} for d in mine],
            )
        rows = session.scalars(
            select(crawl_endpoint.c.digest).where(crawl_endpoint.c.expires_at > now)
        )
        self._remote = frozenset(bytes(d) for d in rows)
        return len(self._remote)


def withdraw(session: Session, worker_id: str) -> None:
    """A clean shutdown: this worker's endpoints are no longer anyone's to exclude."""
    session.execute(delete(crawl_endpoint).where(crawl_endpoint.c.worker_id == worker_id))


def _deployment_key(session: Session) -> bytes:
    key = session.scalar(select(crawl_endpoint_key.c.key).where(crawl_endpoint_key.c.id == 1))
    if key is not None:
        return bytes(key)
    dialect = session.get_bind().dialect.name
    values = {"id": 1, "key": secrets.token_bytes(32)}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(crawl_endpoint_key).values(values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(crawl_endpoint_key).values(values).on_conflict_do_nothing())
    # Two workers racing: whichever key was inserted first is everyone's.
    stored: Any = session.scalar(
        select(crawl_endpoint_key.c.key).where(crawl_endpoint_key.c.id == 1)
    )
    return bytes(stored)


class ExcludeOwnSink:
    """A SightingSink that drops sightings of our own endpoints, then hands the rest on."""

    def __init__(self, inner: SightingSink, own: OwnEndpoints) -> None:
        self.inner = inner
        self.own = own

    async def put(self, sighting: PeerSighting) -> None:
        if self.own.is_own(sighting.ip, sighting.port):
            self.own.excluded += 1
            return
        await self.inner.put(sighting)

    async def put_sample(self, sample: SampleRecord) -> None:
        await self.inner.put_sample(sample)


def addresses_of(hosts: Iterable[str]) -> list[IPAddress]:
    """The literal addresses among listen-interface hosts ('0.0.0.0' and names left out)."""
    out: list[IPAddress] = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            continue
        if not ip.is_unspecified:
            out.append(ip)
    return out


__all__ = [
    "DIGEST_BYTES",
    "ExcludeOwnSink",
    "OwnEndpoints",
    "addresses_of",
    "crawl_endpoint",
    "crawl_endpoint_key",
    "endpoint_digest",
    "withdraw",
]
