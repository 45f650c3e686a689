"""DhtCrawler: the Crawler that finds peers through the Mainline DHT (BEP 5, 32, 33, 42).

Each watched torrent gets a crawling get_peers lookup on a schedule; every
value becomes a PeerSighting and every lookup one SampleRecord with the BEP 33
seed/peer estimates. It never announces and stores nothing (BEP 43 ro=1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from swarmwatch.config import Settings, get_settings
from swarmwatch.crawl import TorrentSource, WatchedTorrent
from swarmwatch.dht.krpc import NodeInfo
from swarmwatch.dht.lookup import (
    DEFAULT_ALPHA,
    DEFAULT_MAX_QUERIES,
    DEFAULT_WIDTH,
    Endpoint,
    GetPeersLookup,
    LookupResult,
)
from swarmwatch.dht.nodeid import bep42_exempt, bep42_node_id, bep42_valid, random_node_id
from swarmwatch.dht.protocol import (
    DEFAULT_PER_NODE_RATE,
    DEFAULT_QUERY_TIMEOUT,
    KrpcProtocol,
    PerNodeLimit,
    QueryBudget,
)
from swarmwatch.dht.routing import K, RoutingTable
from swarmwatch.netsafety import DestinationRefused, check_destination
from swarmwatch.ownendpoints import OwnEndpoints
from swarmwatch.sightings import PeerSighting, SampleRecord, SightingSink, Source

log = logging.getLogger(__name__)

#: The public Mainline routers, used only when not loopback_only and no
#: bootstrap is configured (DESIGN.md, network safety).
PUBLIC_ROUTERS = (
    ("router.bittorrent.com", 6881),
    ("router.utorrent.com", 6881),
    ("dht.transmissionbt.com", 6881),
    ("dht.libtorrent.org", 25401),
)
#: Seconds between lookups of one torrent: alpha60 re-announced every 30 s to a
#: tracker; DHT stores churn more slowly (announces live ~30 min), so 5 min
#: catches arrivals without re-asking the same nodes needlessly.
DEFAULT_LOOKUP_INTERVAL = 300.0
#: Lookups running at once; the global budget, not this, bounds the load.
DEFAULT_CONCURRENT_LOOKUPS = 4
#: Votes from distinct answers before we trust an external address (BEP 42).
EXTERNAL_IP_VOTES = 3


def parse_bootstrap(spec: str) -> list[tuple[str, int]]:
    """`host:port,[v6]:port,...` as in SWARMWATCH_DHT_BOOTSTRAP; bad entries raise ValueError."""
    out: list[tuple[str, int]] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad DHT bootstrap entry {item!r}: expected host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def dht_target(infohash_hex: str) -> bytes:
    """The 20-byte DHT key: a v1 infohash, or a v2 one truncated to 20 bytes (BEP 52)."""
    raw = bytes.fromhex(infohash_hex)
    if len(raw) not in (20, 32):
        raise ValueError("infohash must be 20 (v1) or 32 (v2) bytes")
    return raw[:20]


class DhtCrawler:
    """Crawls the DHT for the watched torrents; implements swarmwatch.crawl.Crawler."""

    name = "dht"

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        bootstrap: list[tuple[str, int]] | None = None,
        bind_host: str | None = None,
        bind_host_v6: str | None = None,
        port: int | None = None,
        query_rate: float | None = None,
        per_node_rate: float = DEFAULT_PER_NODE_RATE,
        timeout: float = DEFAULT_QUERY_TIMEOUT,
        lookup_interval: float = DEFAULT_LOOKUP_INTERVAL,
        concurrent_lookups: int = DEFAULT_CONCURRENT_LOOKUPS,
        identities: int = 1,
        alpha: int = DEFAULT_ALPHA,
        width: int = DEFAULT_WIDTH,
        max_queries_per_lookup: int = DEFAULT_MAX_QUERIES,
        harvest: bool = True,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        own: OwnEndpoints | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.own = own if own is not None else OwnEndpoints()
        self.loopback_only = self.settings.loopback_only
        if bootstrap is None:
            bootstrap = parse_bootstrap(self.settings.dht_bootstrap)
            if not bootstrap and not self.loopback_only:
                bootstrap = list(PUBLIC_ROUTERS)
        for host, _ in bootstrap:
            check_destination(host, loopback_only=self.loopback_only, what="DHT bootstrap node")
        self.bootstrap = bootstrap
        self.bind_host = bind_host or ("127.0.0.1" if self.loopback_only else "0.0.0.0")
        self.bind_host_v6 = bind_host_v6
        self.port = self.settings.dht_port if port is None else port
        self.budget = QueryBudget(query_rate or self.settings.dht_query_rate)
        self.per_node = PerNodeLimit(per_node_rate)
        self.timeout = timeout
        self.lookup_interval = lookup_interval
        self.concurrent_lookups = concurrent_lookups
        self.alpha = alpha
        self.width = width
        self.max_queries_per_lookup = max_queries_per_lookup
        self.harvest = harvest
        self.now = now
        # Several identities spread our queries' ids over the keyspace; with
        # ro=1 they are not added to tables, so this is cheap and optional.
        self.identities = [random_node_id() for _ in range(max(1, identities))]
        self.endpoints: dict[int, KrpcProtocol] = {}
        self._bootstrap_nodes: list[NodeInfo] = []
        self._next_identity = 0
        self._counters: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hosts = [(4, self.bind_host)] + ([(6, self.bind_host_v6)] if self.bind_host_v6 else [])
        for family, host in hosts:
            node_id = self.identities[0]
            _, proto = await loop.create_datagram_endpoint(
                lambda node_id=node_id: KrpcProtocol(  # type: ignore[misc]
                    node_id,
                    loopback_only=self.loopback_only,
                    budget=self.budget,
                    per_node=self.per_node,
                    timeout=self.timeout,
                ),
                local_addr=(host, self.port if family == 4 else 0),
            )
            self.endpoints[proto.family] = proto
            # Our node's endpoint: never a peer, should anyone list it as one.
            sockname = proto.transport.get_extra_info("sockname") if proto.transport else None
            if sockname:
                self.own.add(str(sockname[0]), int(sockname[1]))
        self._bootstrap_nodes = await self._resolve_bootstrap()
        await self.refresh_table()

    async def aclose(self) -> None:
        """The Crawler protocol's close: the sockets go, the counters stay."""
        self.close()

    def close(self) -> None:
        for proto in self.endpoints.values():
            proto.close()
            self._counters.update(proto.stats)  # keep the counts after close
        self.endpoints.clear()

    @property
    def stats(self) -> Counter[str]:
        """Counters: sent, received, timeouts, malformed, unknown_tid, bad_items,
        refused_destinations, remote_errors, lookups, sightings, samples..."""
        total = Counter(self._counters)
        for proto in self.endpoints.values():
            total.update(proto.stats)
        return total

    async def _resolve_bootstrap(self) -> list[NodeInfo]:
        loop = asyncio.get_running_loop()
        nodes: list[NodeInfo] = []
        for host, port in self.bootstrap:
            try:
                check_destination(host, loopback_only=self.loopback_only, what="DHT bootstrap node")
                infos = await loop.getaddrinfo(host, port, type=2)  # SOCK_DGRAM
            except (OSError, DestinationRefused):
                self._counters["bootstrap_unresolved"] += 1
                continue
            for info in infos:
                ip = str(info[4][0])
                if self.loopback_only and not ipaddress.ip_address(ip).is_loopback:
                    continue
                # The id is unknown until the node answers; a far-away
                # placeholder keeps it behind every node whose id we know.
                nodes.append(NodeInfo(b"\xff" * 20, ip, port))
        return nodes

    def _far_seeds(self, target: bytes) -> list[NodeInfo]:
        far = bytes(b ^ 0xFF for b in target)
        return [NodeInfo(far, n.ip, n.port) for n in self._bootstrap_nodes]

    async def refresh_table(self) -> None:
        """Fill the routing table: an iterative find_node toward our own id."""
        if not self.endpoints:
            return
        own = self.identities[0]
        lookup = GetPeersLookup(self.endpoints, own, alpha=self.alpha, width=K, method="find_node")
        await lookup.run(self._far_seeds(own) + self._table_closest(own, K))
        self._counters["table_refreshes"] += 1
        self._adopt_bep42_id()

    def _table_closest(self, target: bytes, n: int) -> list[NodeInfo]:
        out: list[NodeInfo] = []
        for proto in self.endpoints.values():
            out.extend(proto.routing.closest(target, n))
        return out

    def _adopt_bep42_id(self) -> None:
        """BEP 42: once enough nodes agree on our public address, derive our id from it."""
        for proto in self.endpoints.values():
            votes = proto.external_ip_votes.most_common(1)
            if not votes or votes[0][1] < EXTERNAL_IP_VOTES:
                continue
            ip = votes[0][0]
            if bep42_exempt(ip) or bep42_valid(proto.node_id, ip):
                continue
            new_id = bep42_node_id(ip)
            old = list(proto.routing)
            proto.node_id = new_id
            proto.routing = RoutingTable(new_id)
            for node in old:
                proto.routing.add(node)
            if proto.family == 4:
                self.identities[0] = new_id
            self._counters["bep42_id_changes"] += 1

    # -- crawling ----------------------------------------------------------
    def _identity(self) -> bytes:
        self._next_identity = (self._next_identity + 1) % len(self.identities)
        return self.identities[self._next_identity]

    async def lookup(self, torrent: WatchedTorrent, sink: SightingSink) -> list[LookupResult]:
        """One crawl of one torrent (both keys of a hybrid): sightings, then one sample."""
        started = self.now()
        targets = list(
            dict.fromkeys(dht_target(ih) for ih in (torrent.infohash_v1, torrent.infohash_v2) if ih)
        )
        seen: set[Endpoint] = set()
        infohash = torrent.infohash

        async def on_values(values: list[Endpoint]) -> None:
            at = self.now()
            for ip, port in values:
                if (ip, port) in seen:
                    continue
                seen.add((ip, port))
                self._counters["sightings"] += 1
                await sink.put(
                    PeerSighting(
                        infohash=infohash,
                        ip=ipaddress.ip_address(ip),
                        port=port,
                        source=Source.DHT,
                        vantage=self.settings.vantage,
                        seen_at=at,
                    )
                )

        results: list[LookupResult] = []
        for target in targets:
            lookup = GetPeersLookup(
                self.endpoints,
                target,
                alpha=self.alpha,
                width=self.width,
                max_queries=self.max_queries_per_lookup,
                harvest=self.harvest,
                node_id=self._identity(),
                on_values=on_values,
            )
            seeds = self._table_closest(target, 2 * self.width)
            if len(seeds) < K:
                seeds += self._far_seeds(target)
            results.append(await lookup.run(seeds))
        self._counters["lookups"] += 1
        seeds_est = [r.seeds_estimate for r in results if r.seeds_estimate is not None]
        peers_est = [r.peers_estimate for r in results if r.peers_estimate is not None]
        responses = sum(r.responses for r in results)
        await sink.put_sample(
            SampleRecord(
                infohash=infohash,
                source=Source.DHT,
                vantage=self.settings.vantage,
                started_at=started,
                finished_at=self.now(),
                peers_returned=len(seen),
                seeders=round(max(seeds_est)) if seeds_est else None,
                leechers=round(max(peers_est)) if peers_est else None,
                error=None if responses else "no DHT node answered",
            )
        )
        self._counters["samples"] += 1
        return results

    async def run(self, torrents: TorrentSource, sink: SightingSink, stop: asyncio.Event) -> None:
        """Crawl until stop is set: each torrent every lookup_interval seconds."""
        if not self.endpoints:
            await self.start()
        due: dict[str, float] = {}
        running: dict[str, asyncio.Task[None]] = {}
        sem = asyncio.Semaphore(self.concurrent_lookups)

        async def crawl_one(torrent: WatchedTorrent) -> None:
            async with sem:
                try:
                    await self.lookup(torrent, sink)
                except ValueError:
                    self._counters["bad_infohash"] += 1
                except OSError:
                    self._counters["socket_errors"] += 1

        try:
            while not stop.is_set():
                watched = await torrents()
                clock = time.monotonic()
                for torrent in watched:
                    key = torrent.infohash
                    if not key or key in running or due.get(key, 0.0) > clock:
                        continue
                    due[key] = clock + self.lookup_interval
                    running[key] = asyncio.create_task(crawl_one(torrent))
                for key, task in list(running.items()):
                    if task.done():
                        del running[key]
                if len(self._table_closest(self.identities[0], K)) < K:
                    await self.refresh_table()
                pending_due = [t for k, t in due.items() if k not in running]
                wake = min([*pending_due, clock + 5.0]) - time.monotonic()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(0.05, min(wake, 1.0)))
                except TimeoutError:
                    pass
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
            self.close()


__all__ = [
    "DEFAULT_LOOKUP_INTERVAL",
    "PUBLIC_ROUTERS",
    "DhtCrawler",
    "dht_target",
    "parse_bootstrap",
]
