"""Real components: opentracker on loopback, real libtorrent sessions announcing to it from
distinct 127.0.0.x addresses, and the crawler reporting every one, over HTTP and over UDP."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmwatch import bencode
from swarmwatch.crawl import WatchedTorrent, static_torrents
from swarmwatch.netsafety import loopback_ip_filter
from swarmwatch.sightings import MemorySink, PeerSighting, SampleRecord
from swarmwatch.tracker import HttpTrackerClient, TrackerCrawler, UdpTrackerClient
from tests.test_sim_trackers import aio

lt = pytest.importorskip("libtorrent")
OPENTRACKER = shutil.which("opentracker")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        OPENTRACKER is None, reason="opentracker binary absent (Debian: opentracker)"
    ),
]
N_PEERS = 5


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (opentracker takes one number for both)."""
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for TCP and UDP")


def _make_torrent(trackers: list[str]) -> tuple[object, str]:
    # Written by hand: libtorrent 2.1 deprecates create_torrent(file_storage), and a
    # leechers-only swarm needs no real piece hashes.
    info = {"name": "episode.bin", "length": 4 * 16384, "piece length": 16384, "pieces": bytes(80)}
    meta = {"info": info, "announce": trackers[0], "announce-list": [[u] for u in trackers]}
    ti = lt.torrent_info(bencode.encode(meta))
    return ti, hashlib.sha1(bencode.encode(info)).hexdigest()


@pytest.fixture(scope="module")
def opentracker() -> Iterator[tuple[str, str, str]]:
    """(http_url, udp_url, infohash) of a whitelisting opentracker run as nobody."""
    port = _free_port()
    http_url, udp_url = f"http://127.0.0.1:{port}/announce", f"udp://127.0.0.1:{port}/announce"
    # The sessions announce over HTTP only: libtorrent caches UDP tracker connection ids
    # per process, not per session, so sessions on 127.0.0.3.. would reuse the id
    # opentracker bound to 127.0.0.2 and be refused. The crawler still uses both.
    info, ih = _make_torrent([http_url])
    workdir = Path(tempfile.mkdtemp(prefix="swarmwatch-ot-"))
    os.chmod(workdir, 0o755)  # opentracker drops to nobody and must still read its whitelist
    (workdir / "whitelist.txt").write_text(ih + "\n")
    os.chmod(workdir / "whitelist.txt", 0o644)
    proc = subprocess.Popen(
        [
            OPENTRACKER or "",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-P",
            str(port),
            "-w",
            "whitelist.txt",
            "-d",
            str(workdir),
            "-u",
            "nobody",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("opentracker did not start")
        yield http_url, udp_url, ih, info  # type: ignore[misc]
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def swarm(opentracker, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """N_PEERS libtorrent sessions on 127.0.0.2.. that opentracker has heard from."""
    http_url, udp_url, ih, info = opentracker
    sessions, expected = [], {}
    for i in range(N_PEERS):
        addr = f"127.0.0.{i + 2}"
        ses = lt.session(
            {
                "listen_interfaces": f"{addr}:0",
                "outgoing_interfaces": addr,
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "dht_bootstrap_nodes": "",
                "announce_to_all_trackers": True,
                "announce_to_all_tiers": True,
                "alert_mask": lt.alert.category_t.tracker_notification
                | lt.alert.category_t.error_notification,
            }
        )
        ses.set_ip_filter(loopback_ip_filter())
        params = lt.add_torrent_params()
        params.ti = info
        params.save_path = str(tmp_path_factory.mktemp(f"peer{i}"))
        ses.add_torrent(params)
        sessions.append(ses)
        expected[ipaddress.ip_address(addr)] = ses.listen_port()
    replied: dict[int, set[str]] = {i: set() for i in range(N_PEERS)}
    problems: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(not r for r in replied.values()):
        for i, ses in enumerate(sessions):
            for a in ses.pop_alerts():
                if isinstance(a, lt.tracker_reply_alert):
                    replied[i].add(a.tracker_url())
                elif isinstance(a, lt.tracker_error_alert | lt.tracker_warning_alert):
                    problems.append(a.message())
        time.sleep(0.1)
    assert all(replied.values()), f"no announce: {replied} {problems[:5]}"
    yield expected
    del sessions


class UntilAll(MemorySink):
    def __init__(self, want: set[object], stop: asyncio.Event) -> None:
        super().__init__()
        self.want, self.stop = want, stop

    async def put(self, sighting: PeerSighting) -> None:
        await super().put(sighting)

    async def put_sample(self, sample: SampleRecord) -> None:
        await super().put_sample(sample)
        if self.want <= self.addresses():
            self.stop.set()


@pytest.mark.parametrize("protocol", ["http", "udp"])
@aio
async def test_crawler_reports_every_libtorrent_peer(opentracker, swarm, protocol: str) -> None:  # type: ignore[no-untyped-def]
    http_url, udp_url, ih, _ = opentracker
    url = http_url if protocol == "http" else udp_url
    stop = asyncio.Event()
    sink = UntilAll(set(swarm), stop)
    crawler = TrackerCrawler(
        min_interval_floor=0.0,
        http=HttpTrackerClient(),
        udp=UdpTrackerClient(retransmit_base=0.5),
        vantage="opentracker-test",
        numwant=50,
    )
    await asyncio.wait_for(
        crawler.run(static_torrents([WatchedTorrent(ih, None, ((url, 0),))]), sink, stop), 60
    )
    await crawler.aclose()
    found = {s.ip: s.port for s in sink.sightings}
    # Every session, at its own address and listen port; nothing but loopback.
    for ip, port in swarm.items():
        assert found.get(ip) == port
    assert all(ip.is_loopback for ip in found)
    ok = [s for s in sink.samples if s.error is None]
    assert ok and ok[0].tracker_url == url and ok[0].interval
    assert ok[0].seeders is not None and ok[0].leechers is not None
    assert ok[0].leechers >= N_PEERS


@aio
async def test_unregistered_torrent_is_a_counted_failure(opentracker) -> None:  # type: ignore[no-untyped-def]
    http_url, _, _, _ = opentracker
    stop = asyncio.Event()
    sink = MemorySink()
    crawler = TrackerCrawler(min_interval_floor=0.0, http=HttpTrackerClient(), vantage="t")
    task = asyncio.create_task(
        crawler.run(
            static_torrents([WatchedTorrent("12" * 20, None, ((http_url, 0),))]), sink, stop
        )
    )
    while not sink.samples:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    await crawler.aclose()
    assert sink.samples[0].error and sink.samples[0].error.startswith("failure")
    assert crawler.counters["error:failure"] == 1 and not sink.sightings
