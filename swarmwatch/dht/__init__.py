"""Mainline DHT crawler (BEP 5, 32, 33, 42, 43): own asyncio KRPC, crawling lookups.

Modules: krpc (wire format), nodeid (XOR, BEP 42), bloom (BEP 33), routing,
protocol (UDP endpoint and politeness), lookup (crawling get_peers), crawler.
"""

from __future__ import annotations

from swarmwatch.dht.bloom import ScrapeBloom
from swarmwatch.dht.crawler import DhtCrawler, dht_target, parse_bootstrap
from swarmwatch.dht.krpc import KrpcError, KrpcMessage, NodeInfo, parse_message
from swarmwatch.dht.lookup import GetPeersLookup, LookupResult
from swarmwatch.dht.protocol import KrpcProtocol, PerNodeLimit, QueryBudget

__all__ = [
    "DhtCrawler",
    "GetPeersLookup",
    "KrpcError",
    "KrpcMessage",
    "KrpcProtocol",
    "LookupResult",
    "NodeInfo",
    "PerNodeLimit",
    "QueryBudget",
    "ScrapeBloom",
    "dht_target",
    "parse_bootstrap",
    "parse_message",
]
