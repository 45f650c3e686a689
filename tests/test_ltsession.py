"""Real-component tests of the swarm session: real libtorrent peers and opentracker on loopback.

A seeder of a torrent it made and two leechers that cannot finish, on their own
127.0.0.x addresses; the crawler knows only the magnet and must find them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

from swarmwatch.crawl import WatchedTorrent, static_torrents
from swarmwatch.ltsession import SwarmSessionCrawler
from swarmwatch.ltsession.session import LOOPBACK_DHT_SETTINGS
from swarmwatch.netsafety import loopback_ip_filter
from swarmwatch.sightings import MemorySink, Source
from tests.torrent_files import make_torrent

pytestmark = pytest.mark.slow

PAYLOAD_BYTES = 8 * 1024 * 1024
# The seeder's upload cap: 8 MiB at 16 KiB/s keeps the leechers unfinished for minutes,
# while each of them still visibly downloads (payload is flowing in this swarm).
SEEDER_UPLOAD_LIMIT = 16 * 1024
SEEDER_IP, LEECHER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
CRAWLER_IP = "127.0.0.1"
PEX_CRAWLER_IP = "127.0.0.5"
DEADLINE = 90.0  # generous: a loaded CI machine connects slowly; the loop exits as soon as done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What makes loopback DHT nodes acceptable to libtorrent (TESTBED.md).
LOOPBACK_DHT = {"enable_dht": True, **LOOPBACK_DHT_SETTINGS}


def _peer_session(ip: str, *, dht: bool = False) -> Any:
    params = lt.session_params()
    params.settings = {
        "listen_interfaces": f"{ip}:0",
        # Bind outgoing connections and announces to our own loopback address, so
        # that each test peer is a distinct IP to the tracker and the crawler.
        "outgoing_interfaces": ip,
        "announce_ip": ip,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "alert_mask": 0,
        **(LOOPBACK_DHT if dht else {}),
    }
    params.ip_filter = loopback_ip_filter()
    return lt.session(params)


@dataclass
class Swarm:
    infohash: str
    tracker_url: str
    info: bytes
    name: str
    size: int
    seeder: Any
    leechers: list[tuple[Any, Any]] = field(default_factory=list)  # (session, handle)
    seed_handle: Any = None

    def peer_port(self, index: int) -> int:
        return int(self.leechers[index][0].listen_port())

    def payload_to(self, ip: str) -> int:
        """Payload bytes every swarm member exchanged with the peer at ip, both ways."""
        total = 0
        for handle in [self.seed_handle, *(h for _s, h in self.leechers)]:
            for p in handle.get_peer_info():
                if p.ip[0] == ip:
                    total += p.total_download + p.total_upload
        return total


def _seed_torrent(
    src: Path, size: int, *, trackers: tuple[str, ...] = (), v1_only: bool = False
) -> Any:
    """The torrent_info of one file of `size` random bytes, written into src."""
    return lt.torrent_info(
        make_torrent(src, "payload.bin", size, trackers=trackers, v1_only=v1_only)
    )


def _seeding(ti: Any, src: Path) -> Any:
    """add_torrent_params that seed ti from src, where its file already is."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(ti)
    atp.save_path = str(src)
    atp.flags = lt.torrent_flags.seed_mode
    return atp


def _recording_crawler(
    save_path: Path,
) -> tuple[SwarmSessionCrawler, list[tuple[str, str, int, bytes]]]:
    """A crawler on CRAWLER_IP without DHT, in 1 s rounds, saving into save_path
    (made here), and the metadata it hands on, as (infohash, name, size, info)."""
    metadata: list[tuple[str, str, int, bytes]] = []

    async def on_metadata(infohash: str, name: str, size: int, info: bytes) -> None:
        metadata.append((infohash, name, size, info))

    save_path.mkdir()
    crawler = SwarmSessionCrawler(
        on_metadata=on_metadata,
        listen_interfaces=f"{CRAWLER_IP}:0",
        enable_dht=False,
        save_path=save_path,
        resight_interval=1.0,
        poll_interval=0.1,
    )
    return crawler, metadata


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("swarm")
    root.chmod(0o755)  # opentracker drops to user nobody and chroots here
    src = root / "seed"
    tracker_port = _free_port()
    tracker_url = f"http://127.0.0.1:{tracker_port}/announce"
    ti = _seed_torrent(src, PAYLOAD_BYTES, trackers=(tracker_url,))
    infohash = str(ti.info_hashes().v1)

    with _opentracker(root, tracker_port, [infohash]):
        seeder = _peer_session(SEEDER_IP)
        seed_handle = seeder.add_torrent(_seeding(ti, src))
        seed_handle.set_upload_limit(SEEDER_UPLOAD_LIMIT)
        swarm = Swarm(
            infohash=infohash,
            tracker_url=tracker_url,
            info=bytes(ti.info_section()),
            name=ti.name(),
            size=int(ti.total_size()),
            seeder=seeder,
            seed_handle=seed_handle,
        )
        for i, ip in enumerate(LEECHER_IPS):
            ses = _peer_session(ip)
            save = root / f"leecher{i}"
            save.mkdir()
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(ti)
            atp.save_path = str(save)
            swarm.leechers.append((ses, ses.add_torrent(atp)))
        # Connected to each other and holding a piece: leechers a crawler can recognise.
        _wait(
            lambda: all(
                len(h.get_peer_info()) >= 2 and h.status().num_pieces > 0
                for _s, h in swarm.leechers
            )
        )
        yield swarm


@contextlib.contextmanager
def _opentracker(root: Path, port: int, infohashes: list[str]) -> Iterator[None]:
    """opentracker on 127.0.0.1:port, whitelisting these infohashes (hex, 40 digits)."""
    whitelist = root / "whitelist"
    whitelist.write_text("".join(ih + "\n" for ih in infohashes))
    whitelist.chmod(0o644)
    cmd = ["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
    cmd += ["-w", "/whitelist", "-d", str(root)]  # the whitelist path is inside the chroot
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # opentracker refuses to run as root
    assert shutil.which("opentracker"), "the Debian package opentracker is needed"
    tracker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, tracker)
        yield
    finally:
        tracker.terminate()
        tracker.wait(timeout=10)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert proc.poll() is None, "opentracker exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("opentracker did not start listening")


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "swarm did not form"
        time.sleep(0.1)


async def _crawl_until(
    crawler: SwarmSessionCrawler,
    torrent: WatchedTorrent,
    sink: MemorySink,
    done: Callable[[], bool],
    during: Callable[[], Awaitable[None]] | None = None,
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(crawler.run(static_torrents([torrent]), sink, stop))
    try:
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, f"gave up: {crawler.stats} {sink.samples}"
            await asyncio.sleep(0.1)
        if during is not None:
            await during()
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


def _seen(sink: MemorySink, ip: str, seed: bool) -> bool:
    return any(s.ip == ip_address(ip) and s.seed is seed for s in sink.sightings)


def test_magnet_only_crawl_fetches_metadata_and_sees_seed_and_leechers(
    swarm: Swarm, tmp_path: Path
) -> None:
    save_path = tmp_path / "crawler"
    crawler, metadata = _recording_crawler(save_path)
    sink = MemorySink()
    torrent = WatchedTorrent(
        infohash_v1=swarm.infohash, infohash_v2=None, trackers=((swarm.tracker_url, 0),)
    )
    progress_before = [h.status().total_wanted_done for _s, h in swarm.leechers]
    payload_seen: list[int] = []
    unfinished: list[tuple[bool, bool]] = []

    def everyone_seen_twice() -> bool:
        seeder = [
            s
            for s in sink.sightings
            if s.ip == ip_address(SEEDER_IP) and s.seed and Source.TRACKER in s.learnt
        ]
        return (
            bool(metadata)
            and len(seeder) >= 2  # sighted again in a later round
            and all(_seen(sink, ip, seed=False) for ip in LEECHER_IPS)
            # and the swarm moved payload meanwhile (checked below: none of it to us)
            and [h.status().total_wanted_done for _s, h in swarm.leechers] > progress_before
        )

    async def measure_payload() -> None:
        # Read the swarm's side while the crawler is still connected to everyone.
        payload_seen.append(swarm.payload_to(CRAWLER_IP))
        # With its metadata the crawler's torrent wants one piece (so it keeps dialling
        # seeds, as a finished torrent does not), and upload_mode never asks for it.
        (joined,) = crawler._joined.values()
        status = joined.handle.status()
        unfinished.append((status.is_finished, bool(status.flags & lt.torrent_flags.upload_mode)))

    asyncio.run(_crawl_until(crawler, torrent, sink, everyone_seen_twice, measure_payload))

    # BEP 9: the metadata is the seeder's info dict, byte for byte.
    assert metadata == [(swarm.infohash, swarm.name, swarm.size, swarm.info)]
    assert hashlib.sha1(metadata[0][3]).hexdigest() == swarm.infohash

    # Seed state from the peers' bitfields: the seeder is a seed, leechers are not.
    # (None, "not shown yet", is honest; a wrong guess is not.)
    states: dict[str, set[bool | None]] = {}
    for s in sink.sightings:
        states.setdefault(str(s.ip), set()).add(s.seed)
    assert set(states) == {SEEDER_IP, *LEECHER_IPS}
    assert True in states[SEEDER_IP] and False not in states[SEEDER_IP]
    for ip in LEECHER_IPS:
        assert False in states[ip] and True not in states[ip]
    for s in sink.sightings:
        assert s.infohash == swarm.infohash
        # The session is the source; how libtorrent learnt the peer is detail.
        assert s.source == Source.SWARM
        assert any(Source.TRACKER in x.learnt for x in sink.sightings if x.ip == s.ip)
        assert s.client and s.client.startswith("libtorrent")

    # Dedupe: one sighting per (peer, source, seed) per round, not one per 0.1 s poll.
    rounds = [r for r in sink.samples if r.source == Source.SWARM]
    seeder_tracker = [
        s for s in sink.sightings if s.ip == ip_address(SEEDER_IP) and Source.TRACKER in s.learnt
    ]
    assert 2 <= len(seeder_tracker) <= len(rounds)
    last = rounds[-1]
    assert (last.peers_returned, last.seeders, last.leechers) == (3, 1, 2)

    # No payload: the swarm moved payload (the leechers progressed), none of it to or
    # from the crawler, and the crawler's save path is still empty.
    assert [h.status().total_wanted_done for _s, h in swarm.leechers] > progress_before
    assert all(h.status().progress < 1 for _s, h in swarm.leechers)
    assert payload_seen == [0]
    assert unfinished == [(False, True)]
    assert (crawler.stats.payload_bytes_down, crawler.stats.payload_bytes_up) == (0, 0)
    assert list(save_path.rglob("*")) == []


def test_peer_learnt_only_through_pex(swarm: Swarm, tmp_path: Path) -> None:
    """BEP 11: told of one leecher only (magnet x.pe), the crawler hears of the rest by PEX."""
    first = LEECHER_IPS[0]
    magnet = f"magnet:?xt=urn:btih:{swarm.infohash}&x.pe={first}:{swarm.peer_port(0)}"
    torrent = WatchedTorrent(infohash_v1=swarm.infohash, infohash_v2=None, magnet=magnet)
    # An address of its own: the swarm's peers remember 127.0.0.1 from the previous
    # test's crawler, which (rejoined with its v1+v2 metadata) talked v2 with them.
    # libtorrent answers a v1 handshake from an address it knows as v2 with the v2
    # hash, which a magnet's torrent (v1 only, before metadata) refuses as an
    # invalid info-hash: its only peer would never give it anything.
    crawler = SwarmSessionCrawler(
        listen_interfaces=f"{PEX_CRAWLER_IP}:0", enable_dht=False, poll_interval=0.1
    )
    sink = MemorySink()
    others = (SEEDER_IP, LEECHER_IPS[1])

    def others_seen() -> bool:
        return all(
            any(s.ip == ip_address(ip) and Source.PEX in s.learnt for s in sink.sightings)
            for ip in others
        )

    asyncio.run(_crawl_until(crawler, torrent, sink, others_seen))

    sources: dict[str, set[Source]] = {}
    for s in sink.sightings:
        sources.setdefault(str(s.ip), set()).update(s.learnt)
    # No tracker and no DHT: the magnet's peer is a direct one (the others may PEX it
    # back to us too), the others came by PEX.
    assert not sources[first] & {Source.TRACKER, Source.DHT}
    for ip in others:
        assert Source.PEX in sources[ip]
        assert not sources[ip] & {Source.TRACKER, Source.DHT}
    assert _seen(sink, SEEDER_IP, seed=True)
    assert _seen(sink, LEECHER_IPS[1], seed=False)


def test_peers_found_through_the_session_dht(tmp_path: Path) -> None:
    """A trackerless swarm on a loopback DHT of its own peers: the crawler finds it by DHT."""
    _crawl_dht_only_swarm(tmp_path, seed_announces_late=False)


def test_seed_announcing_after_the_crawler_joined_is_sighted_by_dht(tmp_path: Path) -> None:
    """The seed's first DHT announce comes after the crawler's torrent has joined.

    The race behind a flaky CI run, made certain: a crawler torrent that announced
    itself while fetching metadata was found and dialled by the seed, got dropped
    by it on metadata (a v2 hash request over a v1 handshake), and never dialled
    a known seed again, so the seed was never sighted by DHT with its seed state.
    """
    _crawl_dht_only_swarm(tmp_path, seed_announces_late=True)


def _crawl_dht_only_swarm(tmp_path: Path, *, seed_announces_late: bool) -> None:
    src = tmp_path / "seed"
    ti = _seed_torrent(src, 64 * 1024)
    infohash = str(ti.info_hashes().v1)

    members = ["127.0.0.6", "127.0.0.7", "127.0.0.8"]
    sessions = [_peer_session(ip, dht=True) for ip in members]
    ports = [int(ses.listen_port()) for ses in sessions]
    for ses in sessions:
        for ip, port in zip(members, ports, strict=True):
            ses.add_dht_node((ip, port))
    atp = _seeding(ti, src)
    if seed_announces_late:
        atp.flags |= lt.torrent_flags.disable_dht
    seed_handle = sessions[0].add_torrent(atp)  # announces itself to the DHT (BEP 5)

    crawler = SwarmSessionCrawler(
        listen_interfaces=f"{CRAWLER_IP}:0",
        enable_dht=True,
        dht_nodes=list(zip(members, ports, strict=True)),
        save_path=tmp_path / "crawler",
        resight_interval=1.0,  # each round is one more DHT lookup
        poll_interval=0.1,
    )
    (tmp_path / "crawler").mkdir()
    sink = MemorySink()
    torrent = WatchedTorrent(infohash_v1=infohash, infohash_v2=None)

    def seeder_by_dht() -> bool:
        # Both ways: a connected peer with the DHT source flag (learnt from the
        # crawler's lookups, handed to its torrent) and the crawler's per-round
        # dht_get_peers replies themselves.
        connected = any(
            s.ip == ip_address(members[0]) and Source.DHT in s.learnt and s.seed
            for s in sink.sightings
        )
        looked_up = any(r.source == Source.DHT and r.peers_returned for r in sink.samples)
        return connected and looked_up

    async def crawl() -> None:
        async def announce() -> None:
            if seed_announces_late:
                # After two of the crawler's rounds: its torrent has joined (and,
                # before the fix, announced itself) and its lookups found nothing.
                while len({r.started_at for r in sink.samples if r.source == Source.SWARM}) < 2:
                    await asyncio.sleep(0.1)
                seed_handle.unset_flags(lt.torrent_flags.disable_dht)
            # The seeder's first announce may precede its DHT having any node;
            # libtorrent would only retry after 15 min.
            while True:
                seed_handle.force_dht_announce()
                await asyncio.sleep(0.5)

        announcer = asyncio.create_task(announce())
        try:
            await _crawl_until(crawler, torrent, sink, seeder_by_dht)
        finally:
            announcer.cancel()

    asyncio.run(crawl())
    assert crawler.stats.dht_replies >= 1
    dht_samples = [r for r in sink.samples if r.source == Source.DHT]
    assert dht_samples and max(r.peers_returned for r in dht_samples) >= 1
    assert {str(s.ip) for s in sink.sightings} <= set(members)
    assert list((tmp_path / "crawler").rglob("*")) == []


HYBRID_SEED_IP = "127.0.0.9"


@pytest.mark.parametrize(
    "kind",
    [
        # The failing case: on metadata, libtorrent sent the seed (which had dialled
        # us with a v1 handshake) a v2 hash request; the seed dropped us as an
        # "invalid message", and a finished torrent never dials a known seed again.
        "hybrid, v1 magnet",
        "v1-only, v1 magnet",  # no v2 hash: nothing to rejoin
        "hybrid, .torrent",  # metadata known from the start: nothing to rejoin
    ],
)
def test_seed_announcing_after_the_crawler_joined_is_sighted_by_tracker(
    kind: str, tmp_path: Path
) -> None:
    """A seed that finds the crawler by tracker (announcing after it) is sighted as a seed.

    And sighted again in a later round: the crawler stays connected to it.
    """
    root = tmp_path / "tracker"
    root.mkdir()
    root.chmod(0o755)  # opentracker drops to user nobody and chroots here
    src = tmp_path / "seed"
    ti = _seed_torrent(src, 64 * 1024, v1_only=kind.startswith("v1-only"))
    hashes = ti.info_hashes()
    assert hashes.has_v2() is kind.startswith("hybrid")
    v1 = str(hashes.v1)
    v2 = str(hashes.v2) if hashes.has_v2() else None
    port = _free_port()
    url = f"http://127.0.0.1:{port}/announce"
    if kind.endswith(".torrent"):
        torrent = WatchedTorrent(v1, v2, trackers=((url, 0),), info=bytes(ti.info_section()))
    else:
        torrent = WatchedTorrent(v1, None, trackers=((url, 0),))

    save_path = tmp_path / "crawler"
    crawler, metadata = _recording_crawler(save_path)
    sink = MemorySink()
    seeder = _peer_session(HYBRID_SEED_IP)
    atp = _seeding(ti, src)
    atp.trackers = [url]

    def seed_sighted_twice() -> bool:
        # One sighting per (peer, source, seed state) per round: two of one source
        # are two rounds.
        by_source = Counter(
            s.source for s in sink.sightings if s.ip == ip_address(HYBRID_SEED_IP) and s.seed
        )
        return max(by_source.values(), default=0) >= 2

    async def crawl() -> None:
        async def seed_joins_late() -> None:
            # Once the crawler has announced: the tracker then hands the crawler to
            # the seed, which dials it (a v1 handshake, as a v1 magnet announces v1).
            while crawler.stats.tracker_replies < 1:
                await asyncio.sleep(0.1)
            seeder.add_torrent(atp)

        seeding = asyncio.create_task(seed_joins_late())
        try:
            await _crawl_until(crawler, torrent, sink, seed_sighted_twice)
        finally:
            seeding.cancel()

    # v2 announces are made with the truncated v2 hash (BEP 52).
    whitelist = [v1] + ([v2[:40]] if v2 else [])
    with _opentracker(root, port, whitelist):
        asyncio.run(crawl())

    # Our key throughout: the registered v1 infohash, for sightings and samples alike.
    assert {s.infohash for s in sink.sightings} == {v1}
    assert {r.infohash for r in sink.samples} == {v1}
    assert {str(s.ip) for s in sink.sightings} == {HYBRID_SEED_IP}
    assert False not in {s.seed for s in sink.sightings}  # a seed, never a guessed leecher
    if torrent.info is None:
        assert metadata == [(v1, ti.name(), int(ti.total_size()), bytes(ti.info_section()))]
    else:
        assert metadata == []
    assert crawler.stats.torrents_joined == 1
    assert (crawler.stats.payload_bytes_down, crawler.stats.payload_bytes_up) == (0, 0)
    assert list(save_path.rglob("*")) == []
