"""A simulated Mainline DHT on loopback: N nodes on 127.0.0.x holding a synthetic swarm.

Nodes answer get_peers (values, BEP 33 blooms) and find_node like real ones,
hand out only loopback nodes, and store the swarm's peers as data: the
synthetic (often public) addresses are never contacted by anyone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from swarmwatch.dht.bloom import ScrapeBloom
from swarmwatch.dht.krpc import KRPC_ERROR_PROTOCOL, KrpcError, KrpcMessage, NodeInfo
from swarmwatch.dht.nodeid import distance
from swarmwatch.dht.protocol import KrpcProtocol
from swarmwatch.dht.routing import RoutingTable

#: Values in one get_peers reply: libtorrent's dht_max_peers_reply default.
MAX_VALUES_PER_REPLY = 100
#: BEP 5: each announce goes to the K = 8 closest nodes the announcer found.
DEFAULT_REPLICAS = 8
#: Announces scatter: incomplete routing tables mean each announcer's "8
#: closest" are drawn from a wider circle (BEP 33: "a dozen or more nodes").
DEFAULT_SPREAD = 64
#: Peers a node stores per infohash. libtorrent's dht_max_peers is 500; the
#: default here is larger so that the whole swarm is held and recall measures
#: the crawler rather than the storage (held_peers() is the ground truth).
DEFAULT_MAX_VALUES_PER_NODE = 2_000


@dataclass(frozen=True, slots=True)
class StoredPeer:
    ip: str
    port: int
    seed: bool
    compact: bytes


PeerLike = Any  # an object with .ip/.port/.seed, or a tuple (ip, port[, seed])
PeersFor = Callable[[str], Iterable[PeerLike]]


def _as_stored(peer: PeerLike) -> StoredPeer:
    if isinstance(peer, tuple):
        ip, port, seed = (peer + (False,))[:3]
    else:
        ip, port, seed = peer.ip, peer.port, bool(getattr(peer, "seed", False))
    addr = ipaddress.ip_address(str(ip))
    return StoredPeer(str(addr), int(port), bool(seed), addr.packed + int(port).to_bytes(2, "big"))


class SimDhtNode(KrpcProtocol):
    """One simulated node: real KRPC on its own socket, storage filled by SimulatedDht."""

    read_only = False

    def __init__(self, node_id: bytes, rng: random.Random, max_values_per_reply: int) -> None:
        super().__init__(node_id, loopback_only=True)
        self.storage: dict[bytes, list[StoredPeer]] = {}
        self.rng = rng
        self.max_values_per_reply = max_values_per_reply
        self.get_peers_served = 0

    def rpc_get_peers(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        infohash = msg.body.get(b"info_hash")
        if not isinstance(infohash, bytes) or len(infohash) != 20:
            raise KrpcError("get_peers without a 20-byte info_hash")
        self.get_peers_served += 1
        body: dict[str, Any] = {
            "token": self.node_id[:4],
            **self.closest_nodes_body(infohash, msg.body.get(b"want")),
        }
        stored = self.storage.get(infohash)
        if not stored:
            return body
        if msg.body.get(b"scrape") == 1:
            # Like libtorrent: a scrape answers with BEP 33 blooms instead of values.
            seeds, peers = ScrapeBloom(), ScrapeBloom()
            for p in stored:
                (seeds if p.seed else peers).add(p.ip)
            body["BFsd"] = seeds.to_bytes()
            body["BFpe"] = peers.to_bytes()
            return body
        sample = (
            stored
            if len(stored) <= self.max_values_per_reply
            else self.rng.sample(stored, self.max_values_per_reply)
        )
        body["values"] = [p.compact for p in sample]
        return body

    def rpc_announce_peer(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        # The swarm is the only source of values, so ground truth stays exact.
        self._send_error(msg.tid, src, KRPC_ERROR_PROTOCOL, "simulated node: no announces")
        return None


class SimulatedDht:
    """N SimDhtNodes on distinct 127.0.0.x addresses of one event loop.

    `peers` is either a fixed iterable (the same swarm for every infohash) or
    `peers_for(infohash_hex)`, e.g. a SimulatedSwarm's active peers.
    """

    def __init__(
        self,
        n_nodes: int = 200,
        *,
        infohashes: Iterable[str] = (),
        peers: Iterable[PeerLike] | PeersFor = (),
        replicas: int = DEFAULT_REPLICAS,
        spread: int = DEFAULT_SPREAD,
        max_values_per_node: int = DEFAULT_MAX_VALUES_PER_NODE,
        max_values_per_reply: int = MAX_VALUES_PER_REPLY,
        first_host: int = 2,
        v6_nodes: int = 0,
        seed: int = 0,
    ) -> None:
        if not 0 < n_nodes <= 250 * 250:
            raise ValueError("n_nodes out of range")
        self.n_nodes = n_nodes
        self.infohashes = list(infohashes)
        self._peers = peers
        self.replicas = replicas
        self.spread = max(spread, replicas)
        self.max_values_per_node = max_values_per_node
        self.max_values_per_reply = max_values_per_reply
        self.first_host = first_host
        self.v6_nodes = v6_nodes  # extra nodes on ::1 (BEP 32), distinct ports
        self.rng = random.Random(seed)
        self.nodes: list[SimDhtNode] = []
        self._held: dict[bytes, dict[tuple[str, int], StoredPeer]] = {}

    def _host(self, i: int) -> str:
        # 127.0.0.2 … 127.0.0.251, then 127.0.1.x: distinct addresses, one per node.
        n = self.first_host + i
        return f"127.0.{n // 250}.{n % 250 + (1 if n // 250 else 0)}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.n_nodes + self.v6_nodes):
            host = self._host(i) if i < self.n_nodes else "::1"
            node_id = self.rng.randbytes(20)
            rng = random.Random(self.rng.random())
            _, proto = await loop.create_datagram_endpoint(
                lambda node_id=node_id, rng=rng: SimDhtNode(  # type: ignore[misc]
                    node_id, rng, self.max_values_per_reply
                ),
                local_addr=(host, 0),
            )
            self.nodes.append(proto)
        infos = [NodeInfo(n.node_id, *n.local_addr) for n in self.nodes]
        for node in self.nodes:
            # Every node learns every other; k-buckets keep a realistic subset.
            node.routing = RoutingTable(node.node_id)
            for other in self.rng.sample(infos, len(infos)):
                node.routing.add(other)
        self.populate()

    def populate(self) -> None:
        """(Re)store the swarm: each peer on `replicas` of the `spread` nodes nearest the key."""
        for node in self.nodes:
            node.storage.clear()
        self._held.clear()
        for ih in self.infohashes:
            key = bytes.fromhex(ih)[:20]
            raw = self._peers(ih) if callable(self._peers) else self._peers
            peers = [_as_stored(p) for p in raw]
            near = sorted(self.nodes, key=lambda n: distance(n.node_id, key))[: self.spread]
            held = self._held.setdefault(key, {})
            for peer in peers:
                for node in self.rng.sample(near, min(self.replicas, len(near))):
                    stored = node.storage.setdefault(key, [])
                    if len(stored) < self.max_values_per_node:
                        stored.append(peer)
                        held[(peer.ip, peer.port)] = peer

    def held_peers(self, infohash: str) -> set[tuple[str, int]]:
        """Ground truth: every (ip, port) some node holds for infohash."""
        return set(self._held.get(bytes.fromhex(infohash)[:20], {}))

    @property
    def bootstrap(self) -> list[tuple[str, int]]:
        return [n.local_addr for n in self.nodes[:3]]

    @property
    def bootstrap_spec(self) -> str:
        """The same, as SWARMWATCH_DHT_BOOTSTRAP wants it."""
        return ",".join(f"{h}:{p}" for h, p in self.bootstrap)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes.clear()


__all__ = ["MAX_VALUES_PER_REPLY", "SimDhtNode", "SimulatedDht", "StoredPeer"]
