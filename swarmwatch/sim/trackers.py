"""HTTP and UDP trackers on loopback that serve a SimulatedSwarm, as real trackers would.

HTTP: BEP 3 announce (compact per BEP 23 or dict lists), BEP 7 peers6, BEP 48
scrape, failure reason, interval and min interval. UDP: BEP 15 with BEP 41 URL
data. Each announce returns a uniform random sample of numwant active peers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs, urlsplit

from swarmwatch import bencode
from swarmwatch.sim.population import Population, SimPeer
from swarmwatch.tracker import udpwire
from swarmwatch.tracker.client import ScrapeStats
from swarmwatch.tracker.peers import encode_compact_peers

log = logging.getLogger(__name__)

#: Longest HTTP request head accepted: announces are < 1 KiB.
MAX_REQUEST_HEAD = 16 * 1024
#: What the sim answers when numwant is absent (BEP 3 suggests 50).
DEFAULT_NUMWANT = 50


@dataclass
class SimTrackerStats:
    announces: int = 0
    scrapes: int = 0
    peers_returned: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_url_data: bytes = b""  # BEP 41, for tests
    events: Counter[str] = field(default_factory=Counter)  # started/stopped/completed seen


class SimTracker:
    """Both trackers over one swarm. `await start()`, then use http_url / udp_url / udp6_url."""

    def __init__(
        self,
        swarm: Population,
        *,
        interval: int = 1800,
        min_interval: int | None = 60,
        max_numwant: int = 200,
        seed: int = 0,
        host: str = "127.0.0.1",
        host6: str | None = "::1",
    ) -> None:
        self.swarm = swarm
        self.interval = interval
        self.min_interval = min_interval
        self.max_numwant = max_numwant
        self.host, self.host6 = host, host6
        self.rng = random.Random(seed)
        self.stats = SimTrackerStats()
        self.http_url = self.udp_url = ""
        self.udp6_url: str | None = None
        self._server: asyncio.Server | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._connection_ids: set[int] = set()
        self._known = {bytes.fromhex(t) for t in swarm.torrents}

    async def start(self) -> SimTracker:
        loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve_http, self.host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.http_url = f"http://{self.host}:{port}/announce"
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpTrackerProtocol(self, ipv6=False), local_addr=(self.host, 0)
        )
        self._udp.append(transport)
        self.udp_url = f"udp://{self.host}:{transport.get_extra_info('sockname')[1]}/announce"
        if self.host6 and socket.has_ipv6:
            try:
                t6, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpTrackerProtocol(self, ipv6=True),
                    local_addr=(self.host6, 0),
                    family=socket.AF_INET6,
                )
            except OSError:
                log.info("no IPv6 loopback here; the UDP tracker serves IPv4 only")
            else:
                self._udp.append(t6)
                self.udp6_url = f"udp://[{self.host6}]:{t6.get_extra_info('sockname')[1]}/announce"
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in self._udp:
            t.close()

    async def __aenter__(self) -> SimTracker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the tracker's logic, shared by both protocols ----------------------------

    def sample(self, infohash: bytes, numwant: int, family: int | None) -> list[SimPeer]:
        """A uniform sample without replacement of the active peers, as opentracker does."""
        active = self.swarm.active_peers(infohash.hex())
        if family is not None:
            active = [p for p in active if p.ip.version == family]
        k = min(max(0, numwant), self.max_numwant, len(active))
        chosen = self.rng.sample(active, k)
        self.stats.announces += 1
        self.stats.peers_returned += k
        return chosen

    def counts(self, infohash: bytes) -> ScrapeStats:
        active = self.swarm.active_peers(infohash.hex())
        seeds = sum(1 for p in active if p.seed)
        done = sum(1 for p in self.swarm.members(infohash.hex()) if p.seed)
        return ScrapeStats(complete=seeds, incomplete=len(active) - seeds, downloaded=done)

    # --- HTTP -----------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status, body = self._http_response(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, b"OK" if status == 200 else b"Error", len(body))
        )
        writer.write(body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    def _http_response(self, head: bytes) -> tuple[int, bytes]:
        if len(head) > MAX_REQUEST_HEAD:
            return 431, b""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "GET":
            return 400, b""
        url = urlsplit(parts[1])
        # latin-1 keeps percent-decoded binary infohashes byte-for-byte.
        q = parse_qs(url.query, encoding="latin-1", keep_blank_values=True)
        hashes = [v.encode("latin-1") for v in q.get("info_hash", [])]
        if url.path == "/announce":
            return 200, self._http_announce(q, hashes)
        if url.path == "/scrape":
            return 200, self._http_scrape(hashes)
        return 404, b""

    def _fail(self, reason: str) -> bytes:
        self.stats.errors[reason] += 1
        return bencode.encode({"failure reason": reason})

    def _http_announce(self, q: dict[str, list[str]], hashes: list[bytes]) -> bytes:
        if len(hashes) != 1 or len(hashes[0]) != 20:
            return self._fail("invalid info_hash")
        if hashes[0] not in self._known:
            return self._fail("unregistered torrent")
        try:
            numwant = int(q.get("numwant", [str(DEFAULT_NUMWANT)])[0])
            int(q["port"][0])
        except (KeyError, ValueError):
            return self._fail("invalid numwant or port")
        event = q.get("event", [""])[0]
        if event:
            self.stats.events[event] += 1
        peers = self.sample(hashes[0], numwant, None)
        counts = self.counts(hashes[0])
        resp: dict[str, object] = {
            "interval": self.interval,
            "complete": counts.complete,
            "incomplete": counts.incomplete,
        }
        if self.min_interval is not None:
            resp["min interval"] = self.min_interval
        if q.get("compact", ["0"])[0] == "1":
            resp["peers"] = encode_compact_peers((p.ip, p.port) for p in peers if p.ip.version == 4)
            resp["peers6"] = encode_compact_peers(
                ((p.ip, p.port) for p in peers if p.ip.version == 6), ipv6=True
            )
        else:
            no_id = q.get("no_peer_id", ["0"])[0] == "1"
            resp["peers"] = [
                {"ip": str(p.ip), "port": p.port} | ({} if no_id else {"peer id": p.peer_id})
                for p in peers
            ]
        return bencode.encode(resp)

    def _http_scrape(self, hashes: list[bytes]) -> bytes:
        self.stats.scrapes += 1
        wanted = hashes or sorted(self._known)
        files = {}
        for ih in wanted:
            if ih in self._known:
                c = self.counts(ih)
                files[ih] = {
                    "complete": c.complete,
                    "incomplete": c.incomplete,
                    "downloaded": c.downloaded,
                }
        return bencode.encode({"files": files})

    # --- UDP --------------------------------------------------------------------------

    def udp_response(self, data: bytes, ipv6: bool) -> bytes | None:
        try:
            req = udpwire.parse_request(data)
        except udpwire.MalformedRequest:
            self.stats.errors["malformed"] += 1
            return None
        if isinstance(req, udpwire.ConnectRequest):
            conn_id = secrets.randbits(63)
            if len(self._connection_ids) > 100_000:  # a flood of connects must not grow memory
                self._connection_ids.clear()
            self._connection_ids.add(conn_id)
            return udpwire.encode_connect_response(req.transaction_id, conn_id)
        if req.connection_id not in self._connection_ids:
            self.stats.errors["bad connection id"] += 1
            return udpwire.encode_error(req.transaction_id, b"invalid connection id")
        if isinstance(req, udpwire.AnnounceRequest):
            self.stats.last_url_data = req.url_data
            if req.infohash not in self._known:
                self.stats.errors["unregistered torrent"] += 1
                return udpwire.encode_error(req.transaction_id, b"unregistered torrent")
            if req.event:
                self.stats.events[
                    {1: "completed", 2: "started", 3: "stopped"}.get(req.event, "?")
                ] += 1
            numwant = DEFAULT_NUMWANT if req.numwant < 0 else req.numwant
            peers = self.sample(req.infohash, numwant, 6 if ipv6 else 4)
            c = self.counts(req.infohash)
            compact = encode_compact_peers(((p.ip, p.port) for p in peers), ipv6=ipv6)
            return udpwire.encode_announce_response(
                req.transaction_id, self.interval, c.incomplete, c.complete, compact
            )
        self.stats.scrapes += 1
        stats = [
            self.counts(ih) if ih in self._known else ScrapeStats(0, 0, 0) for ih in req.infohashes
        ]
        return udpwire.encode_scrape_response(req.transaction_id, stats)


class _UdpTrackerProtocol(asyncio.DatagramProtocol):
    def __init__(self, tracker: SimTracker, *, ipv6: bool) -> None:
        self.tracker = tracker
        self.ipv6 = ipv6
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        # Answer only loopback senders: this server exists for tests and the demo.
        if not ipaddress.ip_address(str(addr[0]).split("%")[0]).is_loopback:
            return
        reply = self.tracker.udp_response(data, self.ipv6)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


__all__ = ["SimTracker", "SimTrackerStats"]
