"""Benchmark: how many tracker announces the crawler needs to see 95 % of a simulated swarm.

The swarm (50,000 peers, everyone online, no churn) is served by the simulated HTTP
tracker in a child process so that the crawler's own CPU can be measured alone.
Baselines measured in the same run: the coupon-collector bound −ln(0.05)·N/numwant,
an ideal sampler drawing numwant peers uniformly without replacement per announce
(what the bound approximates), and the CPU of parsing the same peers with no crawler.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import random
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

from swarmwatch.crawl import WatchedTorrent, static_torrents
from swarmwatch.sightings import IPAddress, MemorySink, PeerSighting, SampleRecord

INFOHASH = "5e" * 20
TARGET = 0.95


def _serve(conn: Connection, n_peers: int, seed: int, numwant_cap: int) -> None:
    """Child process: the simulated swarm behind its HTTP tracker, until told to stop."""
    from swarmwatch.sim import SimulatedSwarm
    from swarmwatch.sim.trackers import SimTracker

    async def main() -> None:
        swarm = SimulatedSwarm(seed=seed, n_peers=n_peers, torrents=[INFOHASH], diurnal=False)
        # min interval 1 s: the crawler may re-announce quickly; the figure is announces, not time.
        async with SimTracker(swarm, min_interval=1, max_numwant=numwant_cap, seed=seed) as t:
            conn.send(t.http_url)
            await asyncio.to_thread(conn.recv)
            conn.send({"announces": t.stats.announces, "peers_returned": t.stats.peers_returned})

    asyncio.run(main())


class _CountingSink(MemorySink):
    """Counts distinct addresses and notes the announce at which the target was crossed."""

    def __init__(self, target: int, stop: asyncio.Event) -> None:
        super().__init__()
        self.seen: set[IPAddress] = set()
        self.target, self.stop = target, stop
        self.announces = 0
        self.crossed_at: int | None = None
        self.peers_returned = 0

    async def put(self, sighting: PeerSighting) -> None:
        # Sightings are not kept: 50,000 × a few announces would only measure list growth.
        self.seen.add(sighting.ip)
        self.peers_returned += 1
        if self.crossed_at is None and len(self.seen) >= self.target:
            self.crossed_at = self.announces + 1  # this announce's sample comes after its peers

    async def put_sample(self, sample: SampleRecord) -> None:
        self.announces += 1
        if self.crossed_at is not None:
            self.stop.set()


def ideal_announces(n: int, numwant: int, rng: random.Random) -> int:
    """Announces an ideal tracker needs: independent uniform samples without replacement."""
    seen = bytearray(n)
    count = announces = 0
    target = math.ceil(TARGET * n)
    while count < target:
        announces += 1
        for i in rng.sample(range(n), numwant):
            if not seen[i]:
                seen[i] = 1
                count += 1
    return announces


async def _crawl(url: str, n: int, numwant: int, identities: int) -> dict[str, float]:
    from swarmwatch.sim import CompressedClock
    from swarmwatch.tracker import HttpTrackerClient, TrackerCrawler

    stop = asyncio.Event()
    sink = _CountingSink(math.ceil(TARGET * n), stop)
    crawler = TrackerCrawler(
        clock=CompressedClock(factor=1000.0),
        min_interval_floor=0.0,
        numwant=numwant,
        identities=identities,
        http=HttpTrackerClient(),
        vantage="bench",
    )
    cpu0, wall0 = time.process_time(), time.monotonic()
    await crawler.run(static_torrents([WatchedTorrent(INFOHASH, None, ((url, 0),))]), sink, stop)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    await crawler.aclose()
    return {
        "announces": float(sink.crossed_at or sink.announces),
        "announces_total": float(sink.announces),
        "peers_returned": float(sink.peers_returned),
        "recall": len(sink.seen) / n,
        "cpu_s": cpu,
        "wall_s": wall,
        "errors": float(sum(v for k, v in crawler.counters.items() if k.startswith("error:"))),
    }


def _parse_baseline_cpu(peers_returned: int, numwant: int) -> float:
    """CPU to parse the same number of compact peers with no crawler around them."""
    import ipaddress

    from swarmwatch import bencode
    from swarmwatch.tracker.http import parse_announce_response
    from swarmwatch.tracker.peers import encode_compact_peers

    rng = random.Random(0)
    peers = [
        (ipaddress.IPv4Address(rng.getrandbits(32)), rng.randrange(1, 65536))
        for _ in range(numwant)
    ]
    body = bencode.encode({"interval": 1800, "peers": encode_compact_peers(peers)})
    reps = max(1, peers_returned // numwant)
    cpu0 = time.process_time()
    for _ in range(reps):
        parse_announce_response(body)
    return time.process_time() - cpu0


def run_benchmark(**options: Any) -> dict[str, float]:
    n = int(options.get("peers", 50_000))
    numwant = int(options.get("numwant", 200))
    identities = int(options.get("identities", 4))
    seed = int(options.get("seed", 1))
    repeats = int(options.get("ideal_repeats", 5))

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, n, seed, numwant), daemon=True)
    proc.start()
    try:
        if not parent.poll(300):
            raise RuntimeError("simulated tracker did not start")
        url = parent.recv()
        crawl = asyncio.run(_crawl(url, n, numwant, identities))
        parent.send("stop")
        served = parent.recv() if parent.poll(10) else {}
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()

    bound = -math.log(1 - TARGET) * n / numwant
    rng = random.Random(seed)
    ideal = statistics.median(ideal_announces(n, numwant, rng) for _ in range(repeats))
    parse_cpu = _parse_baseline_cpu(int(crawl["peers_returned"]), numwant)
    per_k = crawl["cpu_s"] / max(1.0, crawl["peers_returned"] / 1000)
    parse_per_k = parse_cpu / max(1.0, crawl["peers_returned"] / 1000)
    figures = {
        "peers": float(n),
        "numwant": float(numwant),
        "coupon_bound_announces": bound,
        "ideal_announces_median": float(ideal),
        "crawler_announces_to_95": crawl["announces"],
        "ratio_crawler_to_bound": crawl["announces"] / bound,
        "ratio_ideal_to_bound": ideal / bound,
        "ratio_crawler_to_ideal": crawl["announces"] / ideal,
        "crawler_errors": crawl["errors"],
        "tracker_announces_served": float(served.get("announces", -1)),
        "crawler_cpu_ms_per_1000_peers": per_k * 1000,
        "parse_only_cpu_ms_per_1000_peers": parse_per_k * 1000,
        "ratio_cpu_crawler_to_parse": per_k / parse_per_k if parse_per_k else float("inf"),
        "wall_s": crawl["wall_s"],
    }
    print(f"tracker crawler benchmark: N={n}, numwant={numwant}, identities={identities}")
    print(f"  coupon-collector bound −ln(0.05)·N/{numwant}: {bound:8.1f} announces")
    print(
        f"  ideal sampler (median of {repeats}):          {ideal:8.1f}  "
        f"({ideal / bound:.3f}× bound)"
    )
    print(
        f"  crawler to 95 %:                             {crawl['announces']:8.0f}  "
        f"({figures['ratio_crawler_to_bound']:.3f}× bound, goal ≤ 1.2; "
        f"{figures['ratio_crawler_to_ideal']:.3f}× ideal)"
    )
    print(
        f"  crawler errors: {crawl['errors']:.0f}; "
        f"tracker served {figures['tracker_announces_served']:.0f}"
    )
    print(
        "  crawler CPU per 1,000 peers returned: "
        f"{figures['crawler_cpu_ms_per_1000_peers']:.1f} ms "
        f"(parse alone {figures['parse_only_cpu_ms_per_1000_peers']:.2f} ms, "
        f"{figures['ratio_cpu_crawler_to_parse']:.1f}×); wall {crawl['wall_s']:.1f} s"
    )
    return figures


if __name__ == "__main__":
    run_benchmark()
