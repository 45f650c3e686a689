"""DhtCrawler against the simulated DHT on loopback: ground-truth recall, BEP 33 samples,
schedule, read-only behaviour, the loopback guard and hostile nodes."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from typing import Any

import pytest

from swarmwatch.bencode import encode
from swarmwatch.crawl import WatchedTorrent, static_torrents
from swarmwatch.dht.crawler import DhtCrawler
from swarmwatch.dht.krpc import KrpcMessage, NodeInfo, compact_endpoint
from swarmwatch.dht.protocol import KrpcProtocol
from swarmwatch.netsafety import DestinationRefused
from swarmwatch.sightings import MemorySink, Source
from swarmwatch.sim.dht import SimDhtNode, SimulatedDht

pytestmark = pytest.mark.timeout(120)


def synthetic_peers(n: int, seed: int = 3, v6_share: float = 0.1) -> list[tuple[str, int, bool]]:
    rng = random.Random(seed)
    out: dict[tuple[str, int], bool] = {}
    while len(out) < n:
        if rng.random() < v6_share:
            ip = str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | rng.getrandbits(64)))
        else:
            ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        out[(ip, rng.randint(1, 65535))] = rng.random() < 0.3
    return [(ip, port, seed) for (ip, port), seed in out.items()]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_crawler_finds_every_peer_the_dht_holds_and_records_bep33_estimates() -> None:
    infohash = "a1" * 20
    peers = synthetic_peers(1500)

    async def main() -> tuple[DhtCrawler, MemorySink, SimulatedDht, set[tuple[str, int]]]:
        sim = SimulatedDht(40, infohashes=[infohash], peers=peers, spread=16)
        await sim.start()
        crawler = DhtCrawler(bootstrap=sim.bootstrap, query_rate=2000, per_node_rate=100)
        sink = MemorySink()
        try:
            await crawler.start()
            await crawler.lookup(WatchedTorrent(infohash, None), sink)
            return crawler, sink, sim, sim.held_peers(infohash)
        finally:
            crawler.close()
            sim.close()

    crawler, sink, sim, held = run(main())
    assert len(held) == 1500
    found = {(str(s.ip), s.port) for s in sink.sightings}
    assert found == held
    assert len(sink.sightings) == len(found)  # one sighting per peer per lookup
    assert all(s.source is Source.DHT and s.infohash == infohash for s in sink.sightings)
    (sample,) = sink.samples
    assert sample.source is Source.DHT and sample.peers_returned == 1500
    seeds = sum(1 for p in peers if p[2])
    # BEP 33 blooms: a 2048-bit filter estimates ~1000 within a few per cent.
    assert sample.seeders is not None and abs(sample.seeders - seeds) < 0.15 * seeds
    assert sample.leechers is not None and abs(sample.leechers - (1500 - seeds)) < 0.2 * 1050
    assert crawler.stats["sent_get_peers"] > 0 and crawler.stats["malformed"] == 0


def test_crawler_is_read_only_and_never_announces() -> None:
    infohash = "b2" * 20

    async def main() -> list[SimDhtNode]:
        sim = SimulatedDht(20, infohashes=[infohash], peers=synthetic_peers(50))
        await sim.start()
        nodes = list(sim.nodes)
        crawler = DhtCrawler(bootstrap=sim.bootstrap, query_rate=1000, per_node_rate=100)
        try:
            await crawler.start()
            await crawler.lookup(WatchedTorrent(infohash, None), MemorySink())
            # Our endpoint answers others minimally and refuses to store.
            probe = KrpcProtocol(b"p" * 20, loopback_only=True)
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(lambda: probe, local_addr=("127.0.0.1", 0))
            addr = crawler.endpoints[4].local_addr
            pong = await probe.call_ping(addr)
            assert pong.sender_id == crawler.endpoints[4].node_id
            reply = await probe.call_get_peers(addr, bytes.fromhex(infohash))
            assert b"values" not in reply.body and b"token" in reply.body
            with pytest.raises(Exception, match="203"):
                await probe.request(
                    addr, "announce_peer", {"info_hash": bytes(20), "port": 1, "token": b"ro"}
                )
            probe.close()
        finally:
            crawler.close()
            sim.close()
        return nodes

    nodes = run(main())
    received = sum(n.stats["queries_received"] for n in nodes)
    assert received > 0
    assert sum(n.stats["ro_queries_received"] for n in nodes) == received  # BEP 43 ro=1
    assert sum(n.stats["rpc_announce_peer"] for n in nodes) == 0


def test_run_repeats_lookups_on_schedule() -> None:
    infohash = "c3" * 20

    async def main() -> MemorySink:
        sim = SimulatedDht(20, infohashes=[infohash], peers=synthetic_peers(30))
        await sim.start()
        crawler = DhtCrawler(
            bootstrap=sim.bootstrap, query_rate=1000, per_node_rate=100, lookup_interval=0.2
        )
        sink = MemorySink()
        stop = asyncio.Event()
        task = asyncio.create_task(
            crawler.run(static_torrents([WatchedTorrent(infohash, None)]), sink, stop)
        )
        try:
            for _ in range(200):
                if len(sink.samples) >= 3:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            sim.close()
        return sink

    sink = run(main())
    assert len(sink.samples) >= 3
    assert all(s.peers_returned == 30 for s in sink.samples)
    assert len(sink.sightings) == 30 * len(sink.samples)


class HostileNode(SimDhtNode):
    """Answers get_peers with every kind of garbage, plus some good values."""

    def rpc_get_peers(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        assert self.transport is not None
        # An unsolicited "response" with a transaction id nobody is waiting for.
        self.transport.sendto(encode({"t": b"zz", "y": "r", "r": {"id": self.node_id}}), src)
        self.transport.sendto(b"d1:t2:aa1:y1:r1:rd2:id3:bade", src)  # short id
        self.transport.sendto(b"\x00garbage", src)
        good = [compact_endpoint("198.51.100.7", 6881), compact_endpoint("2001:db8::7", 6882)]
        return {
            "token": b"t",
            "values": [b"x" * 5, b"y" * 17, *good, *([b"z" * 6] * 5000)],
            "nodes": b"n" * 25,  # not a multiple of 26
            "BFsd": b"short",
        }


def test_hostile_input_is_counted_and_dropped() -> None:
    infohash = "d4" * 20

    async def main() -> tuple[DhtCrawler, MemorySink]:
        sim = SimulatedDht(10, infohashes=[infohash], peers=[])
        await sim.start()
        loop = asyncio.get_running_loop()
        _, hostile = await loop.create_datagram_endpoint(
            lambda: HostileNode(b"h" * 20, random.Random(1), 100), local_addr=("127.0.0.99", 0)
        )
        crawler = DhtCrawler(
            bootstrap=[hostile.local_addr, *sim.bootstrap], query_rate=1000, per_node_rate=100
        )
        sink = MemorySink()
        try:
            await crawler.start()
            # Raw garbage at our socket, too.
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            raw.sendto(b"i1e", crawler.endpoints[4].local_addr)
            raw.sendto(b"d" * 70, crawler.endpoints[4].local_addr)
            raw.close()
            await crawler.lookup(WatchedTorrent(infohash, None), sink)
            # The raw garbage may still be queued behind the lookup's replies: wait for it.
            deadline = asyncio.get_running_loop().time() + 30
            while crawler.stats["malformed"] < 4:
                assert asyncio.get_running_loop().time() < deadline, crawler.stats
                await asyncio.sleep(0.01)
        finally:
            crawler.close()
            hostile.close()
            sim.close()
        return crawler, sink

    crawler, sink = run(main())
    stats = crawler.stats
    assert stats["malformed"] >= 4
    assert stats["unknown_tid"] >= 1
    assert stats["bad_items"] >= 4
    found = {(str(s.ip), s.port) for s in sink.sightings}
    assert ("198.51.100.7", 6881) in found and ("2001:db8::7", 6882) in found
    assert len(found) <= 1000 + 3  # the huge list was capped


class LeakyNode(SimDhtNode):
    """Hands out nodes off loopback: the crawler must refuse them, never query them."""

    def rpc_get_peers(self, msg: KrpcMessage, src: tuple[str, int]) -> dict[str, Any] | None:
        public = [NodeInfo(bytes([i]) * 20, f"203.0.113.{i}", 6881) for i in range(1, 9)]
        return {
            "token": b"t",
            "nodes": b"".join(n.node_id + compact_endpoint(*n.addr) for n in public),
        }

    rpc_find_node = rpc_get_peers


def test_loopback_guard_drops_learnt_public_nodes_and_refuses_public_bootstrap() -> None:
    async def main() -> DhtCrawler:
        loop = asyncio.get_running_loop()
        _, leaky = await loop.create_datagram_endpoint(
            lambda: LeakyNode(b"l" * 20, random.Random(1), 100), local_addr=("127.0.0.98", 0)
        )
        crawler = DhtCrawler(bootstrap=[leaky.local_addr], query_rate=1000, per_node_rate=100)
        try:
            await crawler.start()
            await crawler.lookup(WatchedTorrent("e5" * 20, None), MemorySink())
        finally:
            crawler.close()
            leaky.close()
        return crawler

    crawler = run(main())
    assert crawler.stats["refused_destinations"] >= 8
    assert crawler.stats["sent"] == crawler.stats["received"]  # only the loopback node was asked
    with pytest.raises(DestinationRefused):
        DhtCrawler(bootstrap=[("router.bittorrent.com", 6881)])
    with pytest.raises(DestinationRefused):
        DhtCrawler(bootstrap=[("198.51.100.1", 6881)])


def test_public_routers_only_without_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from swarmwatch.config import Settings

    assert DhtCrawler().bootstrap == []  # loopback_only and no bootstrap: nothing at all
    free = Settings(loopback_only=False, dht_bootstrap="")
    assert ("router.bittorrent.com", 6881) in DhtCrawler(settings=free).bootstrap
    own = Settings(loopback_only=False, dht_bootstrap="127.0.0.1:7000")
    assert DhtCrawler(settings=own).bootstrap == [("127.0.0.1", 7000)]


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no ::1 on this machine")
def test_bep32_ipv6_nodes_are_crawled_over_an_ipv6_endpoint() -> None:
    infohash = "f6" * 20

    async def main() -> tuple[DhtCrawler, MemorySink, set[tuple[str, int]], int]:
        sim = SimulatedDht(
            6, v6_nodes=14, infohashes=[infohash], peers=synthetic_peers(200), spread=20
        )
        await sim.start()
        crawler = DhtCrawler(
            bootstrap=sim.bootstrap, bind_host_v6="::1", query_rate=1000, per_node_rate=100
        )
        sink = MemorySink()
        try:
            await crawler.start()
            await crawler.lookup(WatchedTorrent(infohash, None), sink)
            v6_served = sum(n.get_peers_served for n in sim.nodes if n.family == 6)
            return crawler, sink, sim.held_peers(infohash), v6_served
        finally:
            crawler.close()
            sim.close()

    crawler, sink, held, v6_served = run(main())
    assert v6_served > 0
    assert crawler.stats["sent"] > 0
    assert {(str(s.ip), s.port) for s in sink.sightings} == held
