"""Iterative get_peers (BEP 5) that harvests every node near an infohash, then scrapes it (BEP 33).

Unlike a client lookup, which stops at the first values, a crawl keeps `alpha`
queries in flight toward the closest responding nodes, widens its circle while
nodes further out still hold values, re-asks nodes whose replies are full
(they sample at most ~100 of their stored peers per reply) while that still
yields new peers, and finally unions the BEP 33 bloom filters of the holders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from swarmwatch.dht.bloom import ScrapeBloom
from swarmwatch.dht.krpc import WANT_N4, WANT_N6, KrpcError, NodeInfo, parse_get_peers_reply
from swarmwatch.dht.nodeid import distance
from swarmwatch.dht.protocol import KrpcProtocol, KrpcRemoteError, KrpcTimeout
from swarmwatch.dht.routing import K
from swarmwatch.netsafety import DestinationRefused

log = logging.getLogger(__name__)

#: Queries in flight per lookup (Kademlia's alpha is 3; a crawler on a budget
#: can afford more, and the global QueryBudget caps the total anyway).
DEFAULT_ALPHA = 8
#: Nodes nearest the infohash a lookup must hear from before it ends: announces
#: scatter over "a dozen or more nodes around the target key" (BEP 33), so
#: twice K rather than K.
DEFAULT_WIDTH = 2 * K
#: Hard cap on queries in one lookup, so one huge swarm cannot starve the rest.
DEFAULT_MAX_QUERIES = 2_000
#: Re-asks of one node in one lookup (each gives a fresh random sample).
DEFAULT_MAX_QUERIES_PER_NODE = 64
#: A reply with at least this many values may be a sample of a larger store.
FULL_REPLY_VALUES = 50
#: Re-ask a node while its smoothed yield (new peers per reply, halved at each
#: reply) stays above this: about three dry replies in a row end it.
MIN_HARVEST_YIELD = 0.5

Endpoint = tuple[str, int]
ValuesCallback = Callable[[list[Endpoint]], Awaitable[None]]


@dataclass(slots=True)
class LookupResult:
    """What one lookup learnt. peers holds raw addresses: memory only."""

    infohash: bytes
    peers: set[Endpoint] = field(default_factory=set, repr=False)
    queries: int = 0
    responses: int = 0
    timeouts: int = 0
    errors: int = 0
    bad_items: int = 0
    holders: int = 0
    scrapes: int = 0
    seeds_estimate: float | None = None  # BEP 33 BFsd union estimate
    peers_estimate: float | None = None  # BEP 33 BFpe union estimate
    closest: list[NodeInfo] = field(default_factory=list, repr=False)
    responders: set[Endpoint] = field(default_factory=set, repr=False)  # nodes that answered


@dataclass(slots=True)
class _Holder:
    node: NodeInfo
    queries: int = 0
    yield_ewma: float = 0.0
    full: bool = False


class GetPeersLookup:
    """One crawl of one infohash over one or two (IPv4/IPv6) endpoints."""

    def __init__(
        self,
        endpoints: dict[int, KrpcProtocol],
        infohash: bytes,
        *,
        alpha: int = DEFAULT_ALPHA,
        width: int = DEFAULT_WIDTH,
        max_queries: int = DEFAULT_MAX_QUERIES,
        max_queries_per_node: int = DEFAULT_MAX_QUERIES_PER_NODE,
        harvest: bool = True,  # False: a plain client lookup (no widening, no re-asks)
        scrape: bool = True,
        node_id: bytes | None = None,
        on_values: ValuesCallback | None = None,
        method: str = "get_peers",
    ) -> None:
        self.endpoints = endpoints
        self.infohash = infohash
        self.alpha = alpha
        self.width = width
        self.max_queries = max_queries
        self.max_queries_per_node = max_queries_per_node
        self.harvest = harvest and method == "get_peers"
        self.scrape = scrape and method == "get_peers"
        self.node_id = node_id
        self.on_values = on_values
        self.method = method
        self.want = [WANT_N4] * (4 in endpoints) + [WANT_N6] * (6 in endpoints)
        self.result = LookupResult(infohash)
        self._candidates: dict[Endpoint, NodeInfo] = {}
        self._queried: set[Endpoint] = set()
        self._responded: dict[Endpoint, NodeInfo] = {}
        self._failed: set[Endpoint] = set()
        self._holders: dict[Endpoint, _Holder] = {}
        self._inflight: set[Endpoint] = set()
        self._bf_seeds = ScrapeBloom()
        self._bf_peers = ScrapeBloom()

    def _endpoint_for(self, node: NodeInfo) -> KrpcProtocol | None:
        return self.endpoints.get(node.family)

    def _add_candidate(self, node: NodeInfo) -> None:
        if node.addr in self._candidates:
            return
        proto = self._endpoint_for(node)
        if proto is None or not proto.allowed(node.ip):
            return  # refused by the loopback guard (counted there), or wrong family
        self._candidates[node.addr] = node

    def _dist(self, node: NodeInfo) -> int:
        return distance(node.node_id, self.infohash)

    def _next_lookup_node(self) -> NodeInfo | None:
        """Closest unqueried candidate inside the widening circle, if any."""
        live = sorted(
            (n for a, n in self._candidates.items() if a not in self._failed), key=self._dist
        )
        # The circle: `width` nodes, widened to twice the rank of the
        # furthest node that held values, so scattered announces are reached.
        holder_ranks = [i for i, n in enumerate(live) if n.addr in self._holders]
        circle = self.width
        if self.harvest and holder_ranks:
            circle = max(circle, 2 * (holder_ranks[-1] + 1))
        for node in live[:circle]:
            if node.addr not in self._queried:
                return node
        return None

    def _harvest_ready_at(self, node: NodeInfo) -> float:
        proto = self._endpoint_for(node)
        if proto is None or proto.per_node is None:
            return 0.0
        return proto.per_node.ready_at(node.addr) - proto.per_node.clock()

    def _next_harvest_node(self) -> tuple[NodeInfo | None, float | None]:
        """The holder to re-ask now, else how long until one is ready (None: none left)."""
        best: _Holder | None = None
        soonest: float | None = None
        for holder in self._holders.values():
            if (
                not holder.full
                or holder.yield_ewma < MIN_HARVEST_YIELD
                or holder.queries >= self.max_queries_per_node
                or holder.node.addr in self._inflight
            ):
                continue
            # Asking a node before its per-node slot would park a query slot
            # in a sleep; wait for it only when nothing else is ready.
            wait = self._harvest_ready_at(holder.node)
            if wait > 0:
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            # The node that gave most recently is the likeliest to give again.
            if best is None or (holder.yield_ewma, -holder.queries) > (
                best.yield_ewma,
                -best.queries,
            ):
                best = holder
        return (best.node, None) if best else (None, soonest)

    async def run(self, seeds: list[NodeInfo]) -> LookupResult:
        for seed in seeds:
            self._add_candidate(seed)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                wait: float | None = None
                while len(tasks) < self.alpha and self.result.queries < self.max_queries:
                    node: NodeInfo | None = self._next_lookup_node()
                    if node is None and self.harvest:
                        node, wait = self._next_harvest_node()
                    if node is None:
                        break
                    self._queried.add(node.addr)
                    self._inflight.add(node.addr)
                    self.result.queries += 1
                    tasks.add(asyncio.create_task(self._query(node)))
                if not tasks:
                    if wait is None or self.result.queries >= self.max_queries:
                        break
                    await asyncio.sleep(wait)
                    continue
                done, tasks = await asyncio.wait(
                    tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # _query catches network errors; a bug should surface
            if self.scrape:
                await self._scrape_phase()
        finally:
            for task in tasks:
                task.cancel()
        self.result.holders = len(self._holders)
        self.result.closest = sorted(self._responded.values(), key=self._dist)[:K]
        self.result.responders = set(self._responded)
        return self.result

    async def _query(self, node: NodeInfo, *, scrape: bool = False) -> None:
        proto = self._endpoint_for(node)
        assert proto is not None
        try:
            if self.method == "find_node":
                msg = await proto.request(
                    node.addr, "find_node", {"target": self.infohash, "want": self.want}
                )
            else:
                msg = await proto.call_get_peers(
                    node.addr, self.infohash, scrape=scrape, want=self.want, node_id=self.node_id
                )
            reply = parse_get_peers_reply(msg)
        except (KrpcTimeout, KrpcRemoteError, KrpcError, DestinationRefused, OSError) as exc:
            if isinstance(exc, KrpcTimeout):
                self.result.timeouts += 1
            else:
                self.result.errors += 1
            self._failed.add(node.addr)
            proto.routing.mark_failed(node)
            return
        finally:
            self._inflight.discard(node.addr)
        self.result.responses += 1
        self.result.bad_items += reply.bad_items
        proto.stats["bad_items"] += reply.bad_items
        # A node answers with the id it really has; keep that one.
        responder = NodeInfo(reply.node_id, node.ip, node.port)
        self._responded[node.addr] = responder
        self._candidates[node.addr] = responder
        proto.learn(responder)
        for learnt in reply.nodes:
            self._add_candidate(learnt)
        if scrape:
            self._merge_blooms(reply.bf_seeds, reply.bf_peers)
            return
        if reply.values:
            await self._take_values(node, reply.values)

    async def _take_values(self, node: NodeInfo, values: list[Endpoint]) -> None:
        new = [v for v in dict.fromkeys(values) if v not in self.result.peers]
        self.result.peers.update(new)
        holder = self._holders.get(node.addr)
        if holder is None:
            holder = self._holders[node.addr] = _Holder(node, yield_ewma=2.0 * len(new))
        holder.queries += 1
        holder.full = len(values) >= FULL_REPLY_VALUES
        holder.yield_ewma = 0.5 * holder.yield_ewma + 0.5 * len(new)
        if new and self.on_values is not None:
            await self.on_values(new)

    def _merge_blooms(self, seeds: bytes | None, peers: bytes | None) -> None:
        if seeds is None and peers is None:
            return
        self.result.scrapes += 1
        if seeds is not None:
            self._bf_seeds.union(seeds)
        if peers is not None:
            self._bf_peers.union(peers)

    async def _scrape_phase(self) -> None:
        """BEP 33: one scrape=1 get_peers to every holder and the closest responders."""
        closest = sorted(self._responded.values(), key=self._dist)[: self.width]
        targets = {n.addr: n for n in closest}
        targets.update({a: h.node for a, h in self._holders.items()})
        sem = asyncio.Semaphore(self.alpha)

        async def one(node: NodeInfo) -> None:
            async with sem:
                self.result.queries += 1
                await self._query(node, scrape=True)

        await asyncio.gather(*(one(n) for n in targets.values() if n.addr not in self._failed))
        if self.result.scrapes:
            self.result.seeds_estimate = self._bf_seeds.estimate()
            self.result.peers_estimate = self._bf_peers.estimate()


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MAX_QUERIES",
    "DEFAULT_WIDTH",
    "GetPeersLookup",
    "LookupResult",
]
