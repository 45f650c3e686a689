"""DhtCrawler against real DHT implementations on loopback: 20 libtorrent sessions
announcing from distinct 127.0.0.x addresses, and npm bittorrent-dht nodes in the same network."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmwatch.crawl import WatchedTorrent
from swarmwatch.dht.crawler import DhtCrawler
from swarmwatch.ltsession.session import LOOPBACK_DHT_SETTINGS
from swarmwatch.netsafety import loopback_ip_filter
from swarmwatch.sightings import MemorySink

lt = pytest.importorskip("libtorrent")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

N_SESSIONS = 20
FIRST_OCTET = 10  # sessions on 127.0.0.10 … 127.0.0.29
JS_DIR = Path(__file__).parent / "js"


def _session(host: str) -> Any:
    settings = {
        "listen_interfaces": f"{host}:0",
        "enable_dht": True,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        **LOOPBACK_DHT_SETTINGS,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.dht,
    }
    ses = lt.session(settings)
    ses.set_ip_filter(loopback_ip_filter())
    return ses


def _dht_nodes(ses: Any) -> int:
    # status() is deprecated but is the one call that reads the DHT node count directly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return int(ses.status().dht_nodes)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class LtDht:
    def __init__(self) -> None:
        self.hosts = [f"127.0.0.{FIRST_OCTET + i}" for i in range(N_SESSIONS)]
        self.sessions = [_session(h) for h in self.hosts]
        _wait(lambda: all(s.listen_port() for s in self.sessions), 10, "listen ports")
        self.ports = [s.listen_port() for s in self.sessions]
        for i, ses in enumerate(self.sessions):
            for j in (0, 1, 2, (i + 1) % N_SESSIONS, (i + 7) % N_SESSIONS):
                if j != i:
                    ses.add_dht_node((self.hosts[j], self.ports[j]))
        # Ready when every session knows a handful of others (no fixed sleep).
        _wait(lambda: all(_dht_nodes(s) >= 5 for s in self.sessions), 30, "DHT routing tables")
        self.announced: dict[str, set[tuple[str, int]]] = {}

    @property
    def bootstrap(self) -> list[tuple[str, int]]:
        return list(zip(self.hosts[:3], self.ports[:3], strict=True))

    def incoming_announces(self) -> set[tuple[str, int, str]]:
        seen = set()
        for ses in self.sessions:
            for alert in ses.pop_alerts():
                if isinstance(alert, lt.dht_announce_alert):
                    seen.add((str(alert.ip), int(alert.port), str(alert.info_hash)))
        return seen


@pytest.fixture(scope="module")
def lt_dht() -> Iterator[LtDht]:
    net = LtDht()
    yield net
    for ses in net.sessions:
        ses.pause()
    del net.sessions


def _crawl(
    bootstrap: list[tuple[str, int]], infohash: str
) -> tuple[MemorySink, DhtCrawler, set[tuple[str, int]]]:
    async def main() -> tuple[MemorySink, DhtCrawler, set[tuple[str, int]]]:
        # Politeness as shipped (5 queries/s per node) with a small budget.
        crawler = DhtCrawler(bootstrap=bootstrap, query_rate=100)
        sink = MemorySink()
        try:
            await crawler.start()
            results = await crawler.lookup(WatchedTorrent(infohash, None), sink)
        finally:
            crawler.close()
        return sink, crawler, set().union(*(r.responders for r in results))

    return asyncio.run(main())


def test_crawler_finds_every_libtorrent_announcer_with_bep33_estimates(lt_dht: LtDht) -> None:
    infohash = os.urandom(20).hex()
    ih = lt.sha1_hash(bytes.fromhex(infohash))
    announcers = {2: True, 5: True, 8: False, 11: False, 14: False, 17: False}  # index: seed
    expected = set()
    received: set[tuple[str, int, str]] = set()
    for idx, seed in announcers.items():
        port = 7000 + idx
        flags = lt.announce_flags_t.seed if seed else 0
        lt_dht.sessions[idx].dht_announce(ih, port, flags)
        expected.add((lt_dht.hosts[idx], port))

    def stored() -> bool:
        received.update(lt_dht.incoming_announces())
        return {(ip, port) for ip, port, h in received if h == infohash} >= expected

    _wait(stored, 60, "announces to reach the DHT")
    sink, crawler, _ = _crawl(lt_dht.bootstrap, infohash)
    found = {(str(s.ip), s.port) for s in sink.sightings}
    assert found == expected
    (sample,) = sink.samples
    assert sample.peers_returned == len(expected)
    # BEP 33 from real libtorrent nodes: 2 seeds, 4 downloaders.
    assert sample.seeders == 2 and sample.leechers == 4
    assert crawler.stats["malformed"] == 0 and crawler.stats["remote_errors"] == 0


def _node_modules() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    modules = JS_DIR / "node_modules" / "bittorrent-dht"
    if not modules.exists():
        pytest.fail("run `npm install --ignore-scripts` in tests/js first (CI does)")
    return modules


def test_crawler_interoperates_with_bittorrent_dht_nodes(lt_dht: LtDht) -> None:
    _node_modules()
    infohash = os.urandom(20).hex()
    n_js = 4
    spec = ",".join(f"{h}:{p}" for h, p in lt_dht.bootstrap)
    proc = subprocess.Popen(
        ["node", str(JS_DIR / "dht_nodes.mjs"), spec, infohash, str(n_js), "40", "9000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        announced: dict[int, tuple[str, int]] = {}
        js_addrs: list[tuple[str, int]] = []
        deadline = time.monotonic() + 60
        while len(announced) < n_js and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if "listening" in event:
                js_addrs.append((event["host"], event["dht_port"]))
            if "announced" in event:
                assert event["error"] is None, event
                announced[event["announced"]] = (event["host"], event["port"])
        assert len(announced) == n_js, "bittorrent-dht nodes did not announce"
        # Start from a JS node: the crawler must speak to them as well as to libtorrent.
        sink, crawler, responders = _crawl(js_addrs[:1] + lt_dht.bootstrap[:1], infohash)
        found = {(str(s.ip), s.port) for s in sink.sightings}
        assert found == set(announced.values())
        assert responders & set(js_addrs), "no bittorrent-dht node answered the crawler"
        assert crawler.stats["malformed"] == 0
    finally:
        # Closing stdin makes the script exit. The rest of its output is read from the same
        # file object as the lines above: communicate() would read the pipe itself and miss
        # what readline() had already buffered.
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = proc.stdout.read()
        proc.stdout.close()
    assert any('"get_peers"' in line for line in out.splitlines())
