"""UDP tracker client (BEP 15): one socket per address family, replies routed to futures.

Connection ids are cached for CONNECTION_ID_TTL seconds; a request unanswered
after base·2^n seconds is sent again, up to max_retransmits times (BEP 15 uses
base 15 and n ≤ 8; both are constructor arguments so tests can run in ms).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast
from urllib.parse import urlsplit

from swarmwatch.config import get_settings
from swarmwatch.netsafety import resolve_checked
from swarmwatch.sightings import IPAddress
from swarmwatch.tracker import udpwire
from swarmwatch.tracker.client import (
    MAX_NUMWANT,
    AnnounceResult,
    CrawlIdentity,
    Event,
    ScrapeResult,
)
from swarmwatch.tracker.exceptions import (
    TrackerFailure,
    TrackerResponseError,
    TrackerTimeout,
    TrackerUnreachable,
)

log = logging.getLogger(__name__)

#: BEP 15: a connection id may be used for one minute after it was received.
CONNECTION_ID_TTL = 60.0
#: BEP 15: wait 15·2^n seconds before retransmitting.
RETRANSMIT_BASE = 15.0
#: BEP 15 allows n up to 8 (over an hour); a crawler with many swarms gives up sooner.
DEFAULT_MAX_RETRANSMITS = 2
#: Largest datagram we accept: an IPv6 announce answer of MAX_NUMWANT peers fits well below.
MAX_DATAGRAM = 65_535

Address = tuple[str, int]


class _Endpoint(asyncio.DatagramProtocol):
    """One UDP socket: matches each reply to the future waiting on its transaction id."""

    def __init__(self, counters: Counter[str]) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], Address]] = {}
        self.counters = counters

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) < 8:
            self.counters["udp_runt"] += 1
            return
        tid = int.from_bytes(data[4:8], "big")
        waiter = self.pending.get(tid)
        # A reply must come from the address we asked: anyone can send us datagrams.
        if waiter is None or (str(addr[0]), addr[1]) != waiter[1]:
            self.counters["udp_unmatched"] += 1
            return
        if not waiter[0].done():
            waiter[0].set_result(data)

    def error_received(self, exc: Exception) -> None:
        self.counters["udp_socket_error"] += 1


class UdpTrackerClient:
    """TrackerClient for udp:// announce URLs."""

    def __init__(
        self,
        *,
        loopback_only: bool | None = None,
        retransmit_base: float = RETRANSMIT_BASE,
        max_retransmits: int = DEFAULT_MAX_RETRANSMITS,
        connection_ttl: float = CONNECTION_ID_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = get_settings()
        self.loopback_only = settings.loopback_only if loopback_only is None else loopback_only
        self.retransmit_base = retransmit_base
        self.max_retransmits = max_retransmits
        self.connection_ttl = connection_ttl
        self._monotonic = monotonic
        self.counters: Counter[str] = Counter()
        self._endpoints: dict[int, _Endpoint] = {}
        self._connections: dict[Address, tuple[int, float]] = {}
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        for ep in self._endpoints.values():
            if ep.transport is not None:
                ep.transport.close()
        self._endpoints.clear()

    async def _endpoint(self, family: int) -> _Endpoint:
        async with self._lock:
            ep = self._endpoints.get(family)
            if ep is None:
                loop = asyncio.get_running_loop()
                local = "::" if family == socket.AF_INET6 else "0.0.0.0"
                if self.loopback_only:
                    local = "::1" if family == socket.AF_INET6 else "127.0.0.1"
                _, ep = await loop.create_datagram_endpoint(
                    lambda: _Endpoint(self.counters), local_addr=(local, 0), family=family
                )
                self._endpoints[family] = ep
            return ep

    def _local_ip(self, family: int) -> IPAddress | None:
        """The address our socket is bound to, when it is one (not the wildcard)."""
        ep = self._endpoints.get(family)
        if ep is None or ep.transport is None:
            return None
        try:
            ip = ipaddress.ip_address(ep.transport.get_extra_info("sockname")[0])
        except (ValueError, TypeError, IndexError):
            return None
        return None if ip.is_unspecified else ip

    async def _resolve(self, url: str) -> tuple[Address, int, str]:
        parts = urlsplit(url)
        if parts.scheme != "udp" or not parts.hostname or not parts.port:
            raise TrackerUnreachable("not a udp://host:port tracker URL")
        host, port = parts.hostname, parts.port
        try:
            ipaddress.ip_address(host)
            infos = resolve_checked(host, port, loopback_only=self.loopback_only)
        except ValueError:
            # A name: resolve off the event loop; resolve_checked still filters the answers.
            try:
                infos = await asyncio.to_thread(
                    resolve_checked, host, port, loopback_only=self.loopback_only
                )
            except OSError:
                raise TrackerUnreachable("tracker name does not resolve") from None
        family, *_, sockaddr = infos[0]
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return (str(sockaddr[0]), int(sockaddr[1])), int(family), path

    async def _exchange(
        self, ep: _Endpoint, addr: Address, build: Callable[[int], bytes]
    ) -> tuple[bytes, int]:
        """Send build(tid) and wait for the reply, retransmitting with back-off (BEP 15)."""
        assert ep.transport is not None
        tid = secrets.randbits(32)
        while tid in ep.pending:
            tid = secrets.randbits(32)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        ep.pending[tid] = (fut, addr)
        packet = build(tid)
        try:
            for n in range(self.max_retransmits + 1):
                ep.transport.sendto(packet, addr)
                try:
                    # The same transaction id across retransmits: a late first reply still counts.
                    return await asyncio.wait_for(
                        asyncio.shield(fut), self.retransmit_base * 2**n
                    ), tid
                except TimeoutError:
                    self.counters["udp_retransmit"] += 1
            raise TrackerTimeout("UDP tracker did not answer")
        finally:
            ep.pending.pop(tid, None)
            if not fut.done():
                fut.cancel()

    async def _connection_id(self, ep: _Endpoint, addr: Address) -> int:
        cached = self._connections.get(addr)
        if cached and self._monotonic() - cached[1] < self.connection_ttl:
            return cached[0]
        data, tid = await self._exchange(ep, addr, udpwire.encode_connect_request)
        conn_id = udpwire.parse_connect_response(data, tid)
        self._connections[addr] = (conn_id, self._monotonic())
        return conn_id

    async def _request(
        self, url: str, build: Callable[[int, int, str], bytes]
    ) -> tuple[bytes, int, int]:
        addr, family, path = await self._resolve(url)
        ep = await self._endpoint(family)
        conn_id = await self._connection_id(ep, addr)
        try:
            data, tid = await self._exchange(ep, addr, lambda t: build(conn_id, t, path))
        except TrackerTimeout:
            self._connections.pop(addr, None)
            raise
        if data[:4] == udpwire.ACTION_ERROR.to_bytes(4, "big"):
            # The error may mean our connection id went stale: get a fresh one next time.
            self._connections.pop(addr, None)
        return data, tid, family

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
        def build(conn_id: int, tid: int, path: str) -> bytes:
            return udpwire.encode_announce_request(
                conn_id,
                tid,
                infohash,
                identity.peer_id,
                left=left,
                event=int(event),
                key=identity.key,
                numwant=max(0, min(numwant, MAX_NUMWANT)),
                port=identity.port,
                url_data=path if path not in ("", "/") else "",
            )

        data, tid, family = await self._request(url, build)
        resp = udpwire.parse_announce_response(data, tid, ipv6=family == socket.AF_INET6)
        usable = [(ip, port) for ip, port in resp.peers if port != 0]
        return AnnounceResult(
            local_ip=self._local_ip(family),
            interval=resp.interval,
            seeders=resp.seeders,
            leechers=resp.leechers,
            peers=tuple(usable),
            skipped=len(resp.peers) - len(usable),
        )

    async def scrape(self, url: str, infohashes: Sequence[bytes]) -> ScrapeResult:
        hashes = list(infohashes)[: udpwire.MAX_SCRAPE_HASHES]
        if any(len(h) != 20 for h in hashes):
            raise ValueError("UDP scrape takes 20-byte infohashes")
        data, tid, _ = await self._request(
            url, lambda conn_id, t, _path: udpwire.encode_scrape_request(conn_id, t, hashes)
        )
        return udpwire.parse_scrape_response(data, tid, hashes)


__all__ = [
    "CONNECTION_ID_TTL",
    "RETRANSMIT_BASE",
    "TrackerFailure",
    "TrackerResponseError",
    "UdpTrackerClient",
]
