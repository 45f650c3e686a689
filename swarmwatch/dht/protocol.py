"""The KRPC endpoint: one UDP socket, transaction ids matched to futures, politeness.

Outgoing queries are `call_<verb>`, incoming ones `rpc_<verb>` (bmuller/kademlia
style). Every send passes the loopback guard, the global query budget and the
per-node limit; every datagram received is parsed, and a bad one is counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from swarmwatch.bencode import encode
from swarmwatch.dht.krpc import (
    KRPC_ERROR,
    KRPC_ERROR_METHOD_UNKNOWN,
    KRPC_ERROR_PROTOCOL,
    KRPC_QUERY,
    WANT_N4,
    WANT_N6,
    KrpcError,
    KrpcMessage,
    NodeInfo,
    compact_endpoint,
    compact_nodes,
    parse_compact_nodes,
    parse_compact_peer,
    parse_message,
)
from swarmwatch.dht.routing import K, RoutingTable
from swarmwatch.netsafety import DestinationRefused, check_destination

log = logging.getLogger(__name__)

#: Seconds before an unanswered query counts as a timeout (libtorrent waits 15 s
#: in total but gives up on a node after ~3 s; most answers arrive within 1 s).
DEFAULT_QUERY_TIMEOUT = 3.0
#: Queries per second to any one node. libtorrent bans a source that sends more
#: than dht_block_threshold (20) packets/s; 5/s stays far below it.
DEFAULT_PER_NODE_RATE = 5.0


class KrpcTimeout(Exception):
    """A query got no answer in time."""


class KrpcRemoteError(Exception):
    """A node answered a query with a KRPC error (BEP 5 "e" message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"KRPC error {code}: {message}")
        self.code = code


class QueryBudget:
    """A token bucket shared by all lookups: at most `rate` queries/s, bursts of `burst`."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiting lookups are served in order
            while True:
                now = self.clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class PerNodeLimit:
    """Spaces queries to one endpoint at least 1/rate seconds apart."""

    #: Entries kept before stale ones are pruned: bounded memory on a long crawl.
    MAX_ENTRIES = 65_536

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self._next: dict[tuple[str, int], float] = {}

    def delay(self, addr: tuple[str, int]) -> float:
        """Reserve the next slot for addr and return how long to wait for it."""
        now = self.clock()
        if len(self._next) > self.MAX_ENTRIES:
            self._next = {a: t for a, t in self._next.items() if t > now}
        slot = max(now, self._next.get(addr, now))
        self._next[addr] = slot + self.interval
        return slot - now

    def ready_at(self, addr: tuple[str, int]) -> float:
        return self._next.get(addr, 0.0)


class KrpcProtocol(asyncio.DatagramProtocol):
    """A read-only DHT node (BEP 43 ro=1): queries others, answers minimally, stores nothing.

    Why read-only: a crawler that sits in others' routing tables would draw
    queries it cannot usefully answer; with ro=1 nodes do not add us, and we
    still answer ping/find_node/get_peers (nodes only) for those who ask, and
    refuse announce_peer, so nothing is ever stored.
    """

    read_only = True

    def __init__(
        self,
        node_id: bytes,
        *,
        loopback_only: bool,
        budget: QueryBudget | None = None,
        per_node: PerNodeLimit | None = None,
        timeout: float = DEFAULT_QUERY_TIMEOUT,
        routing: RoutingTable | None = None,
    ) -> None:
        self.node_id = node_id
        self.loopback_only = loopback_only
        self.budget = budget
        self.per_node = per_node
        self.timeout = timeout
        self.routing = routing or RoutingTable(node_id)
        self.transport: asyncio.DatagramTransport | None = None
        self.family = 4
        self._pending: dict[bytes, tuple[asyncio.Future[KrpcMessage], tuple[str, int]]] = {}
        self._tid = int.from_bytes(os.urandom(2), "big")
        self.stats: Counter[str] = Counter()
        #: BEP 42: external addresses nodes told us we have (compact "ip" field).
        self.external_ip_votes: Counter[str] = Counter()

    # -- transport ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.family = 6 if sockname and ":" in sockname[0] else 4

    @property
    def local_addr(self) -> tuple[str, int]:
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return (sockname[0], sockname[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the query will time out; count it.
        self.stats["socket_errors"] += 1

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.stats["received"] += 1
        src = (str(addr[0]), int(addr[1]))
        try:
            msg = parse_message(data)
        except KrpcError:
            self.stats["malformed"] += 1
            return
        if msg.kind == KRPC_QUERY:
            self._handle_query(msg, src)
            return
        pending = self._pending.get(msg.tid)
        if pending is None or pending[1] != src:
            # Late answers after a timeout land here too, as do forged replies.
            self.stats["unknown_tid"] += 1
            return
        fut, _ = self._pending.pop(msg.tid)
        if not fut.done():
            fut.set_result(msg)

    # -- outgoing ----------------------------------------------------------
    def _next_tid(self) -> bytes:
        self._tid = (self._tid + 1) & 0xFFFF
        return self._tid.to_bytes(2, "big")

    def allowed(self, ip: str) -> bool:
        """The loopback guard for a learnt node: refused nodes are counted, never queried."""
        try:
            check_destination(ip, loopback_only=self.loopback_only, what="DHT node")
        except DestinationRefused:
            self.stats["refused_destinations"] += 1
            return False
        return True

    async def request(
        self, addr: tuple[str, int], method: str, args: dict[str, Any]
    ) -> KrpcMessage:
        """Send one query and wait for its response; raise KrpcTimeout/KrpcRemoteError."""
        check_destination(addr[0], loopback_only=self.loopback_only, what="DHT node")
        if self.budget is not None:
            await self.budget.acquire()
        if self.per_node is not None:
            wait = self.per_node.delay(addr)
            if wait > 0:
                await asyncio.sleep(wait)
        if self.transport is None or self.transport.is_closing():
            raise KrpcTimeout("endpoint closed")
        tid = self._next_tid()
        while tid in self._pending:
            tid = self._next_tid()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[KrpcMessage] = loop.create_future()
        self._pending[tid] = (fut, addr)
        query: dict[str, Any] = {"t": tid, "y": "q", "q": method, "a": {"id": self.node_id, **args}}
        if self.read_only:
            query["ro"] = 1  # BEP 43
        self.transport.sendto(encode(query), addr)
        self.stats["sent"] += 1
        self.stats[f"sent_{method}"] += 1
        try:
            msg = await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise KrpcTimeout(method) from None
        finally:
            self._pending.pop(tid, None)
        if msg.kind == KRPC_ERROR:
            self.stats["remote_errors"] += 1
            raise KrpcRemoteError(msg.error_code or 0, msg.error_message or "")
        self._note_external_ip(msg)
        return msg

    def _note_external_ip(self, msg: KrpcMessage) -> None:
        raw = msg.body.get(b"ip")  # BEP 42: responses may carry our address
        if isinstance(raw, bytes) and len(raw) in (6, 18):
            try:
                ip, _ = parse_compact_peer(raw)
            except KrpcError:
                return
            if len(self.external_ip_votes) < 64:
                self.external_ip_votes[ip] += 1

    def _want(self) -> list[bytes]:
        return [WANT_N6 if self.family == 6 else WANT_N4]

    async def call_ping(self, addr: tuple[str, int]) -> KrpcMessage:
        return await self.request(addr, "ping", {})

    async def call_find_node(self, addr: tuple[str, int], target: bytes) -> KrpcMessage:
        return await self.request(addr, "find_node", {"target": target, "want": self._want()})

    async def call_get_peers(
        self,
        addr: tuple[str, int],
        infohash: bytes,
        *,
        scrape: bool = False,
        want: list[bytes] | None = None,
        node_id: bytes | None = None,
    ) -> KrpcMessage:
        args: dict[str, Any] = {"info_hash": infohash, "want": want or self._want()}
        if scrape:
            args["scrape"] = 1  # BEP 33
        if node_id is not None:
            args["id"] = node_id  # one of several crawler identities
        return await self.request(addr, "get_peers", args)

    # -- incoming ----------------------------------------------------------
    def _handle_query(self, msg: KrpcMessage, src: tuple[str, int]) -> None:
        self.stats["queries_received"] += 1
        self.stats["ro_queries_received"] += msg.read_only
        handler = getattr(self, f"rpc_{msg.query}", None)
        # Only known verbs get their own counter: a remote must not grow our memory.
        self.stats[f"rpc_{msg.query}" if handler else "rpc_unknown"] += 1
        if handler is None:
            self._send_error(msg.tid, src, KRPC_ERROR_METHOD_UNKNOWN, "Method Unknown")
            return
        try:
            body: dict[str, Any] | None = handler(msg, src)
        except KrpcError:
            self.stats["malformed"] += 1
            self._send_error(msg.tid, src, KRPC_ERROR_PROTOCOL, "Protocol Error")
            return
        if body is None:
            return
        reply = {"id": self.node_id, **body}
        # BEP 42: tell the querier the address we see it from.
        self._send({"t": msg.tid, "y": "r", "r": reply, "ip": compact_endpoint(*src)}, src)

    def _send(self, message: dict[str, Any], addr: tuple[str, int]) -> None:
        # Replies go only where loopback_only allows too: a spoofed source must
        # not make us send off loopback.
        if self.transport is None or not self.allowed(addr[0]):
            return
        self.transport.sendto(encode(message), addr)

    def _send_error(self, tid: bytes, addr: tuple[str, int], code: int, text: str) -> None:
        self._send({"t": tid, "y": "e", "e": [code, text]}, addr)

    def closest_nodes_body(self, target: bytes, want: Any) -> dict[str, Any]:
        nodes = self.routing.closest(target, K)
        v4, v6 = compact_nodes(nodes)
        wants = set(want) if isinstance(want, list) else {WANT_N6 if self.family == 6 else WANT_N4}
        body: dict[str, Any] = {}
        if WANT_N4 in wants:
            body["nodes"] = v4
        if WANT_N6 in wants:
            body["nodes6"] = v6
        return body

    def rpc_ping(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        return {}

    def rpc_find_node(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        target = msg.body.get(b"target")
        if not isinstance(target, bytes) or len(target) != 20:
            raise KrpcError("find_node without a 20-byte target")
        return self.closest_nodes_body(target, msg.body.get(b"want"))

    def rpc_get_peers(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        infohash = msg.body.get(b"info_hash")
        if not isinstance(infohash, bytes) or len(infohash) != 20:
            raise KrpcError("get_peers without a 20-byte info_hash")
        # A token is required by BEP 5, but we never accept an announce with it.
        return {"token": b"ro", **self.closest_nodes_body(infohash, msg.body.get(b"want"))}

    def rpc_announce_peer(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        self._send_error(msg.tid, src, KRPC_ERROR_PROTOCOL, "read-only node stores nothing")
        return None

    def learn(self, node: NodeInfo) -> bool:
        """Add a node to the routing table if the loopback guard allows it."""
        if node.family != self.family or not self.allowed(node.ip):
            return False
        return self.routing.add(node)


def parse_find_node_nodes(msg: KrpcMessage) -> list[NodeInfo]:
    """Nodes in a find_node/get_peers response; a bad string is skipped (counted by caller)."""
    out: list[NodeInfo] = []
    for key, v6 in ((b"nodes", False), (b"nodes6", True)):
        raw = msg.body.get(key)
        if isinstance(raw, bytes):
            try:
                out.extend(parse_compact_nodes(raw, v6=v6))
            except KrpcError:
                continue
    return out


async def open_endpoint(
    protocol_factory: Callable[[], KrpcProtocol], host: str, port: int = 0
) -> KrpcProtocol:
    """Bind a KrpcProtocol (or subclass) to host:port on the running loop."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(protocol_factory, local_addr=(host, port))
    return proto


__all__ = [
    "DEFAULT_PER_NODE_RATE",
    "DEFAULT_QUERY_TIMEOUT",
    "KrpcProtocol",
    "KrpcRemoteError",
    "KrpcTimeout",
    "PerNodeLimit",
    "QueryBudget",
    "open_endpoint",
    "parse_find_node_nodes",
]
