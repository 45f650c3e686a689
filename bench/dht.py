"""Benchmark: DHT crawler recall on a simulated DHT (200 nodes, 10,000-peer swarm).

Prints recall after `seconds`, queries per peer found, and a baseline measured in
the same run: a plain client lookup (alpha 3, width K, no re-asks, no widening).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
from typing import Any

from swarmwatch.config import get_settings
from swarmwatch.crawl import WatchedTorrent
from swarmwatch.dht.crawler import DhtCrawler
from swarmwatch.dht.routing import K
from swarmwatch.sightings import MemorySink
from swarmwatch.sim.dht import SimulatedDht


def synthetic_swarm(n: int, seed: int = 1) -> list[tuple[str, int, bool]]:
    """n distinct synthetic public-looking peers (data only: never contacted)."""
    rng = random.Random(seed)
    peers: set[tuple[str, int]] = set()
    while len(peers) < n:
        addr = ipaddress.IPv4Address(rng.getrandbits(32))
        if addr.is_global and not addr.is_multicast:
            peers.add((str(addr), rng.randint(1024, 65535)))
    return [(ip, port, rng.random() < 0.3) for ip, port in sorted(peers)]


async def _crawl(
    sim: SimulatedDht, infohash: str, seconds: float, query_rate: float, **crawler_opts: Any
) -> dict[str, float]:
    crawler = DhtCrawler(bootstrap=sim.bootstrap, query_rate=query_rate, **crawler_opts)
    sink = MemorySink()
    held = sim.held_peers(infohash)
    found_at: dict[str, float] = {}
    t0 = time.monotonic()
    await crawler.start()
    task = asyncio.create_task(crawler.lookup(WatchedTorrent(infohash, None), sink))
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=seconds)
    except TimeoutError:
        pass
    elapsed = time.monotonic() - t0
    found = {(str(s.ip), s.port) for s in sink.sightings}
    queries = crawler.stats["sent"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    finished = task.done() and not task.cancelled()
    crawler.close()
    sample = sink.samples[-1] if sink.samples else None
    found_at["recall"] = len(found & held) / len(held) if held else 0.0
    found_at["peers_found"] = float(len(found & held))
    found_at["queries"] = float(queries)
    found_at["queries_per_peer"] = queries / max(1, len(found))
    found_at["seconds"] = elapsed
    found_at["lookup_finished"] = float(finished)
    found_at["bep33_seeds_estimate"] = float(sample.seeders or 0) if sample else 0.0
    found_at["bep33_leechers_estimate"] = float(sample.leechers or 0) if sample else 0.0
    return found_at


async def _run(nodes: int, peers: int, seconds: float, query_rate: float) -> dict[str, float]:
    infohash = os.urandom(20).hex()
    swarm = synthetic_swarm(peers)
    sim = SimulatedDht(nodes, infohashes=[infohash], peers=swarm)
    await sim.start()
    try:
        held = len(sim.held_peers(infohash))
        crawl = await _crawl(sim, infohash, seconds, query_rate)
        base = await _crawl(
            sim,
            infohash,
            seconds,
            query_rate,
            alpha=3,
            width=K,
            max_queries_per_lookup=10_000,
            harvest=False,
        )
    finally:
        sim.close()
    out = {
        "nodes": float(nodes),
        "swarm_peers": float(peers),
        "held_fraction": held / peers,
        "query_rate": query_rate,
        **{f"crawler_{k}": v for k, v in crawl.items()},
        **{f"baseline_{k}": v for k, v in base.items()},
    }
    return out


def run_benchmark(**options: Any) -> dict[str, float]:
    """Options: nodes=200, peers=10000, seconds=10, query_rate=settings.dht_query_rate."""
    nodes = int(options.get("nodes", 200))
    peers = int(options.get("peers", 10_000))
    seconds = float(options.get("seconds", 10.0))
    query_rate = float(options.get("query_rate", get_settings().dht_query_rate))
    figures = asyncio.run(_run(nodes, peers, seconds, query_rate))
    print(f"simulated DHT: {nodes} nodes, {peers} peers ({figures['held_fraction']:.1%} held)")
    print(f"query budget {query_rate:g}/s, {seconds:g} s per crawl")
    for who in ("crawler", "baseline"):
        print(
            f"{who:>9}: recall {figures[f'{who}_recall']:.2%}, "
            f"{figures[f'{who}_queries']:.0f} queries, "
            f"{figures[f'{who}_queries_per_peer']:.3f} queries/peer found, "
            f"lookup {'finished' if figures[f'{who}_lookup_finished'] else 'cut off'} "
            f"after {figures[f'{who}_seconds']:.1f} s, "
            f"BEP 33 seeds~{figures[f'{who}_bep33_seeds_estimate']:.0f} "
            f"leechers~{figures[f'{who}_bep33_leechers_estimate']:.0f}"
        )
    return figures


if __name__ == "__main__":
    run_benchmark()
