"""SwarmSessionCrawler: one libtorrent session that joins every registered swarm, as alpha60 did.

It fetches BEP 9 metadata for magnet-only torrents, and reports every connected peer
(with how it was learnt, seed state and client) and the session's DHT results as sightings.
The DHT results are also handed to the swarm's torrent, which dials them (source DHT).

No payload is downloaded or uploaded, by construction and checked at run time:
- each torrent joins in upload_mode (libtorrent sends no piece request, nor an
  interested message) with every file at priority 0 but one piece wanted, so that
  libtorrent keeps dialling seeds (_keep_unfinished), and as it never holds a piece
  it has nothing to upload (params.CRAWL_FLAGS says why each flag is there);
- web seeds are stripped, so no HTTP payload fetch exists either;
- every poll reads each torrent's payload byte counters: any byte moved pauses the
  torrent, logs an error and is counted in stats (a tripwire, never expected to fire);
- nothing reaches storage: no piece is ever held, so libtorrent writes no file
  into save_path (a private temporary directory unless one is given).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libtorrent as lt

from swarmwatch.config import Settings, get_settings
from swarmwatch.crawl import TorrentSource, WatchedTorrent
from swarmwatch.ltsession.params import CRAWL_FLAGS, TorrentRefused, add_params
from swarmwatch.ltsession.peers import (
    PEER_SOURCE_DHT,
    PEER_SOURCE_RESUME_DATA,
    RoundDedupe,
    SeedStateGate,
    connected_peers,
    sightings_of,
)
from swarmwatch.ltsession.session import bound_hosts, new_session, parse_host_ports
from swarmwatch.netsafety import is_loopback
from swarmwatch.ownendpoints import OwnEndpoints
from swarmwatch.sightings import IPAddress, PeerSighting, SampleRecord, SightingSink, Source

log = logging.getLogger(__name__)

#: Called once per magnet-registered torrent when its metadata arrives (BEP 9):
#: (infohash, name, total size in bytes, bencoded info dict).
MetadataCallback = Callable[[str, str, int, bytes], Awaitable[None] | None]


#: A peer whose connection closed is dialled again this many times a round at most
#: (libtorrent's min_reconnect_time is the round over this, times the peer's failures
#: plus one). At one round, a peer that dropped an idle connection (aria2 does after 30 s)
#: was dialled again 5.6-7.1 s later in 5 s rounds, so a drop early in a round left the
#: next round without it (seen in the interop test's late rounds: 5 of 6 clients).
RECONNECTS_PER_ROUND = 5


def reconnect_seconds(round_seconds: float) -> int:
    """libtorrent's min_reconnect_time for a crawl of rounds this long (whole seconds)."""
    return max(1, int(round_seconds) // RECONNECTS_PER_ROUND)


#: A peer stays "known and reachable" (dialled again, counted in coverage) this many
#: rounds after its last connection or DHT listing: one that left the swarm stops counting.
REACHABLE_ROUNDS = 10


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _best_state(a: bool | None, b: bool | None) -> bool | None:
    """Seed if either says seed; leecher if either says leecher; else unknown."""
    if a is True or b is True:
        return True
    if a is False or b is False:
        return False
    return None


@dataclass(slots=True)
class SwarmSessionStats:
    """Counters, for /metrics and tests; no addresses."""

    torrents_joined: int = 0
    torrents_refused: int = 0
    metadata_received: int = 0
    metadata_callback_errors: int = 0
    sightings: int = 0
    samples: int = 0
    tracker_replies: int = 0
    tracker_errors: int = 0
    dht_replies: int = 0
    reconnects: int = 0  # known peers dialled again because no connection to them was left
    alerts_dropped: int = 0
    torrent_errors: int = 0
    source_errors: int = 0
    payload_bytes_down: int = 0  # must stay 0: the no-payload tripwire
    payload_bytes_up: int = 0  # must stay 0


@dataclass(frozen=True, slots=True)
class _Rejoin:
    """What a magnet's torrent is added again with once its metadata shows a v2 hash.

    The magnet's own trackers and peers, already filtered by add_params; the rest
    (tracker, PEX and DHT peers) the new torrent learns again as the first one did.
    """

    trackers: tuple[str, ...]
    tiers: tuple[int, ...]
    peers: tuple[tuple[str, int], ...]
    save_path: str


@dataclass(slots=True)
class _Joined:
    infohash: str  # our key: the registered v1 (or v2) infohash, lower-case hex
    handle: Any
    metadata_known: bool
    # The DHT key, fixed at join: after metadata a hybrid torrent's "best" hash
    # becomes the v2 one, and replies must still find their swarm.
    dht_hash: Any = None
    # Peers (by address) sighted this round, with their best-known seed state.
    round_peers: dict[IPAddress, bool | None] = field(default_factory=dict)
    # Peers (by address) we held a connection to, either way, with the round they were
    # last connected in: dialled again when a round finds them gone.
    reachable: dict[IPAddress, int] = field(default_factory=dict)
    # A listen port per address, to dial it on: from our outgoing connections, our DHT
    # replies, and other crawlers' tracker and DHT answers (hint()). An incoming
    # connection only shows the peer's ephemeral port.
    listen_ports: dict[IPAddress, int] = field(default_factory=dict)
    gate: SeedStateGate = field(default_factory=SeedStateGate)
    tripped: bool = False
    # Set for a magnet that names no v2 hash: see _rejoin.
    rejoin: _Rejoin | None = None


class SwarmSessionCrawler:
    """The libtorrent swarm session as a Crawler (swarmwatch.crawl.Crawler)."""

    name = "swarm"

    def __init__(
        self,
        *,
        on_metadata: MetadataCallback | None = None,
        settings: Settings | None = None,
        listen_interfaces: str | None = None,
        enable_dht: bool = True,
        dht_nodes: Sequence[tuple[str, int]] | None = None,
        save_path: str | Path | None = None,
        resight_interval: float | None = None,
        poll_interval: float = 1.0,
        alert_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
        own: OwnEndpoints | None = None,
        connection_budget: int | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.on_metadata = on_metadata
        loopback_only = self.settings.loopback_only
        # A fixed port is the user's choice; the default lets the OS pick, and
        # under loopback_only it must be a loopback address anyway.
        self.listen_interfaces = listen_interfaces or (
            "127.0.0.1:0" if loopback_only else f"0.0.0.0:{self.settings.dht_port}"
        )
        self.enable_dht = enable_dht
        self.dht_nodes = list(
            parse_host_ports(self.settings.dht_bootstrap) if dht_nodes is None else dht_nodes
        )
        self.save_path = Path(save_path) if save_path is not None else None
        # alpha60 re-announced every 30 s: a connected peer is sighted again each round.
        self.resight_interval = (
            self.settings.swarm_round_seconds if resight_interval is None else resight_interval
        )
        self.connection_budget = connection_budget or self.settings.swarm_connection_budget
        self.own = own if own is not None else OwnEndpoints()
        self._round = 0
        # How often connected peers are read: short connections are missed between polls.
        self.poll_interval = poll_interval
        # How often alerts are popped: metadata and DHT replies wait at most this long.
        self.alert_interval = alert_interval
        self.clock = clock
        self.now = now
        self.stats = SwarmSessionStats()
        self._session: Any = None
        self._joined: dict[str, _Joined] = {}
        self._by_handle: dict[Any, _Joined] = {}
        self._by_dht_hash: dict[str, _Joined] = {}
        self._refused: set[str] = set()
        self._own: set[tuple[IPAddress, int]] = set()
        self._dedupe = RoundDedupe()
        self._round_started = self.now()
        self.last_coverage = (0, 0)

    async def run(self, torrents: TorrentSource, sink: SightingSink, stop: asyncio.Event) -> None:
        with tempfile.TemporaryDirectory(prefix="swarmwatch-lt-") as tmp:
            save_path = self.save_path or Path(tmp)
            self._session = new_session(
                loopback_only=self.settings.loopback_only,
                listen_interfaces=self.listen_interfaces,
                enable_dht=self.enable_dht,
                dht_nodes=self.dht_nodes,
                reconnect_seconds=reconnect_seconds(self.resight_interval),
            )
            try:
                await self._crawl(torrents, sink, stop, save_path)
            finally:
                self._close()

    async def aclose(self) -> None:
        """Nothing to release: run() closes its session when it returns."""

    async def _crawl(
        self, torrents: TorrentSource, sink: SightingSink, stop: asyncio.Event, save_path: Path
    ) -> None:
        self._own = self._own_endpoints()
        for ip, port in self._own:
            self.own.add(ip, port)
        self.own.add_port(int(self._session.listen_port()))
        next_round = next_poll = self.clock()
        while not stop.is_set():
            await self._pump_alerts(sink)
            t = self.clock()
            if t >= next_round:
                await self._end_round(sink)
                await self._refresh(torrents, save_path)
                self._dht_lookups()
                self._reconnect()
                next_round = t + self.resight_interval
            if t >= next_poll:
                await self._poll(sink)
                next_poll = t + self.poll_interval
            try:
                await asyncio.wait_for(stop.wait(), self.alert_interval)
            except TimeoutError:
                pass
        # What was learnt in the last partial round is still a sample.
        await self._pump_alerts(sink)
        await self._end_round(sink)

    def _close(self) -> None:
        ses, self._session = self._session, None
        if ses is not None:
            ses.pause()
            for joined in self._joined.values():
                ses.remove_torrent(joined.handle)
        self._joined.clear()
        self._by_handle.clear()
        self._by_dht_hash.clear()

    def _own_endpoints(self) -> set[tuple[IPAddress, int]]:
        port = int(self._session.listen_port())
        return {(ipaddress.ip_address(host), port) for host in bound_hosts(self.listen_interfaces)}

    # -- registrations -------------------------------------------------------

    async def _refresh(self, torrents: TorrentSource, save_path: Path) -> None:
        try:
            wanted = {t.infohash.lower(): t for t in await torrents() if t.infohash}
        except Exception:  # the registry is not ours to crash on
            self.stats.source_errors += 1
            log.exception("torrent source failed; keeping the current swarms")
            return
        for key in list(self._joined):
            if key not in wanted:
                self._leave(key)
        for key, torrent in wanted.items():
            if key not in self._joined and key not in self._refused:
                self._join(key, torrent, save_path)

    def _join(self, key: str, torrent: WatchedTorrent, save_path: Path) -> None:
        try:
            atp = add_params(torrent, save_path, loopback_only=self.settings.loopback_only)
            if torrent.info is None:
                # Until its metadata arrives, a magnet's torrent does not announce
                # itself on the DHT (our lookups feed it the DHT's peers meanwhile):
                # a hybrid v1+v2 seed that finds us there dials in, and on metadata
                # libtorrent sends it a v2 hash request over the v1 handshake, which
                # the seed rejects ("invalid message"). Once dropped, a seed is never
                # dialled again by a finished torrent, so it would go unsighted.
                atp.flags |= lt.torrent_flags.disable_dht
            handle = self._session.add_torrent(atp)
            handle.set_max_connections(self.connection_budget)
            if torrent.info is not None:
                _keep_unfinished(handle)
        except (TorrentRefused, RuntimeError) as exc:
            self._refused.add(key)
            self.stats.torrents_refused += 1
            log.warning("cannot join swarm %s: %s", key[:8], exc)
            return
        dht_hash = handle.info_hashes().get_best()
        joined = _Joined(key, handle, metadata_known=torrent.info is not None, dht_hash=dht_hash)
        if torrent.info is None and not atp.info_hashes.has_v2():
            joined.rejoin = _Rejoin(
                trackers=tuple(atp.trackers),
                tiers=tuple(atp.tracker_tiers),
                peers=tuple((str(host), int(port)) for host, port in atp.peers),
                save_path=str(atp.save_path),
            )
        self._joined[key] = joined
        self._by_handle[handle] = joined
        self._by_dht_hash[str(dht_hash)] = joined
        self.stats.torrents_joined += 1
        log.info("joined swarm %s (%s)", key[:8], "info" if torrent.info else "magnet")

    def _leave(self, key: str) -> None:
        joined = self._joined.pop(key)
        self._by_handle.pop(joined.handle, None)
        self._by_dht_hash = {k: v for k, v in self._by_dht_hash.items() if v is not joined}
        self._session.remove_torrent(joined.handle)
        log.info("left swarm %s", key[:8])

    # -- peers ---------------------------------------------------------------

    async def _poll(self, sink: SightingSink, *, flush: bool = False) -> None:
        seen_at = self.now()
        vantage = self.settings.vantage
        for joined in list(self._joined.values()):
            handle = joined.handle
            if not handle.is_valid():
                continue
            self._check_no_payload(joined, handle.status())
            due = joined.gate.poll(connected_peers(handle.get_peer_info(), self._own))
            if flush:
                due += joined.gate.flush()
            for peer in due:
                # Any sighting with known state decides: seed over leecher over unknown.
                before = joined.round_peers.get(peer.ip)
                joined.round_peers[peer.ip] = _best_state(before, peer.seed)
                joined.reachable[peer.ip] = self._round
                if not peer.incoming:
                    joined.listen_ports[peer.ip] = peer.port
                for sighting in sightings_of(peer, joined.infohash, vantage, seen_at):
                    await self._put(sink, sighting)

    async def _put(self, sink: SightingSink, sighting: PeerSighting) -> None:
        if self._dedupe.first(sighting):
            self.stats.sightings += 1
            await sink.put(sighting)

    def _check_no_payload(self, joined: _Joined, status: Any) -> None:
        down, up = int(status.total_payload_download), int(status.total_payload_upload)
        if (down or up) and not joined.tripped:
            joined.tripped = True
            self.stats.payload_bytes_down += down
            self.stats.payload_bytes_up += up
            joined.handle.pause()
            log.error(
                "payload moved in swarm %s (%d down, %d up): paused", joined.infohash[:8], down, up
            )

    async def _end_round(self, sink: SightingSink) -> None:
        # Peers still of unknown seed state are sighted before the round closes.
        await self._poll(sink, flush=True)
        finished = self.now()
        sighted = known = 0
        for joined in self._joined.values():
            states = list(joined.round_peers.values())
            reachable = self._reachable(joined)
            sighted += len(joined.round_peers)
            known += len(reachable | joined.round_peers.keys())
            sample = SampleRecord(
                infohash=joined.infohash,
                source=Source.SWARM,
                vantage=self.settings.vantage,
                started_at=self._round_started,
                finished_at=finished,
                peers_returned=len(joined.round_peers),
                seeders=states.count(True),
                leechers=states.count(False),
                known_peers=len(reachable | joined.round_peers.keys()),
            )
            joined.round_peers.clear()
            self.stats.samples += 1
            await sink.put_sample(sample)
        self._dedupe.clear()
        self._round_started = finished
        self.last_coverage = (sighted, known)
        self._round += 1

    def _reachable(self, joined: _Joined) -> set[IPAddress]:
        """Addresses connected, or listed by the DHT, in one of the last REACHABLE_ROUNDS rounds."""
        oldest = self._round - REACHABLE_ROUNDS
        for ip in [ip for ip, r in joined.reachable.items() if r < oldest]:
            del joined.reachable[ip]
        return set(joined.reachable)

    def hint(self, sighting: PeerSighting) -> None:
        """A listen endpoint another crawler learnt (a tracker's or the DHT's answer).

        Kept in memory only, to dial the peer on once its connection is gone: a peer
        that dialled us shows only an ephemeral port (aria2 and Transmission dial in
        once the tracker lists us, and aria2 drops a connection neither side is
        interested in), so without this we could never reach it again.
        """
        joined = self._joined.get(sighting.infohash)
        if joined is not None and sighting.port:
            joined.listen_ports[sighting.ip] = sighting.port

    def coverage(self) -> tuple[int, int]:
        """(peers sighted in the last round, peers known and reachable), over all swarms."""
        return self.last_coverage

    def _reconnect(self) -> None:
        """Dial again every reachable peer no connection is left to, within the budget.

        libtorrent alone dials a peer again only from its peer list: not one that dialled
        us (its listen port is not known there), not within min_reconnect_time (a fifth
        of the round, see reconnect_seconds), and not a seed at all once the torrent is finished
        (see _keep_unfinished). Without this a swarm round sees fewer and fewer of the
        peers as the crawl goes on.
        """
        for joined in self._joined.values():
            handle = joined.handle
            if not handle.is_valid():
                continue
            connected = {peer.ip for peer in connected_peers(handle.get_peer_info(), self._own)}
            room = self.connection_budget - len(connected)
            for ip in sorted(joined.reachable, key=lambda a: -joined.reachable[a]):
                if room <= 0:
                    break
                port = joined.listen_ports.get(ip)
                if ip in connected or port is None:
                    continue
                if self.settings.loopback_only and not is_loopback(str(ip)):
                    continue
                handle.connect_peer((str(ip), port), PEER_SOURCE_RESUME_DATA)
                connected.add(ip)
                room -= 1
                self.stats.reconnects += 1
            # Ask the trackers again too (their min interval still applies).
            handle.force_reannounce()

    def _dht_lookups(self) -> None:
        if not self.enable_dht:
            return
        for joined in self._joined.values():
            self._session.dht_get_peers(joined.dht_hash)

    # -- alerts (pumped as Tribler does: pop everything, dispatch by type) ---

    async def _pump_alerts(self, sink: SightingSink) -> None:
        for alert in self._session.pop_alerts():
            handler = self._handlers.get(type(alert))
            if handler is not None:
                await handler(self, alert, sink)

    async def _on_metadata_received(self, alert: Any, sink: SightingSink) -> None:
        joined = self._by_handle.get(alert.handle)
        if joined is None or joined.metadata_known:
            return
        joined.metadata_known = True
        ti = alert.handle.torrent_file()
        if ti is not None and joined.rejoin is not None and ti.info_hashes().has_v2():
            self._rejoin(joined, ti)  # the metadata is good even if this fails
        else:
            # Its own DHT announces may start now: a peer that dials in meets a torrent
            # that knows its v2 hashes (see _join).
            alert.handle.unset_flags(lt.torrent_flags.disable_dht)
            if ti is None:
                return
            # default_dont_download already did this; set it explicitly all the same.
            alert.handle.prioritize_files([0] * ti.num_files())
            _keep_unfinished(alert.handle)
        self.stats.metadata_received += 1
        log.info(
            "metadata for %s: %d files, %d bytes",
            joined.infohash[:8],
            ti.num_files(),
            ti.total_size(),
        )
        if self.on_metadata is None:
            return
        try:
            result = self.on_metadata(
                joined.infohash, ti.name(), int(ti.total_size()), bytes(ti.info_section())
            )
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.stats.metadata_callback_errors += 1
            log.exception("metadata callback failed for %s", joined.infohash[:8])

    def _rejoin(self, joined: _Joined, ti: Any) -> None:
        """Add a v1 magnet's torrent again from its metadata, which shows a v2 hash too.

        A hybrid v1+v2 torrent joined by its v1 magnet connects to peers with v1
        handshakes, but once the metadata arrives libtorrent sends them v2 hash
        requests over those, and a seed rejects that ("invalid message") and drops
        us. A finished torrent never dials a known seed again, so the seed would go
        unsighted for good (whether it came by tracker, PEX or the DHT). A torrent
        added with its full metadata from the start sends hash requests only over
        v2 handshakes (seen: the seed answers them, and stays connected), so it is
        added again that way: same key, flags, trackers, magnet peers and save path,
        and the peers are learnt again. Hashes are not payload: nothing is downloaded.
        """
        rejoin = joined.rejoin
        assert rejoin is not None
        old = joined.handle
        if old.is_valid():
            self._check_no_payload(joined, old.status())
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(ti)
        atp.trackers = list(rejoin.trackers)
        atp.tracker_tiers = list(rejoin.tiers)
        atp.peers = list(rejoin.peers)
        atp.save_path = rejoin.save_path
        atp.flags = CRAWL_FLAGS
        # No moment with a wanted file (default_dont_download does the same).
        atp.file_priorities = [0] * ti.num_files()
        self._by_handle.pop(old, None)
        self._session.remove_torrent(old)
        try:
            handle = self._session.add_torrent(atp)
        except RuntimeError as exc:
            del self._joined[joined.infohash]
            self._by_dht_hash = {k: v for k, v in self._by_dht_hash.items() if v is not joined}
            self._refused.add(joined.infohash)
            self.stats.torrent_errors += 1
            log.warning("cannot rejoin swarm %s with its metadata: %s", joined.infohash[:8], exc)
            return
        handle.set_max_connections(self.connection_budget)
        _keep_unfinished(handle)
        joined.handle = handle
        joined.rejoin = None
        if joined.tripped:
            handle.pause()
        self._by_handle[handle] = joined
        log.info("rejoined swarm %s with its v1+v2 metadata", joined.infohash[:8])

    async def _on_dht_get_peers_reply(self, alert: Any, sink: SightingSink) -> None:
        joined = self._by_dht_hash.get(str(alert.info_hash))
        if joined is None:
            return
        self.stats.dht_replies += 1
        started = self.now()
        count = 0
        for host, port in alert.peers():
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if (ip, int(port)) in self._own:
                continue
            count += 1
            joined.listen_ports[ip] = int(port)
            # Listed by the DHT this round with its listen port: still in the swarm and
            # dialable, so it stays known in coverage even while no connection is open
            # (a leecher that dropped an idle connection, a client that never dials out).
            joined.reachable[ip] = self._round
            self._hand_to_torrent(joined, ip, int(port))
            await self._put(
                sink,
                PeerSighting(
                    infohash=joined.infohash,
                    ip=ip,
                    port=int(port),
                    source=Source.SWARM,
                    vantage=self.settings.vantage,
                    seen_at=started,
                    learnt=(Source.DHT,),
                ),
            )
        self.stats.samples += 1
        await sink.put_sample(
            SampleRecord(
                infohash=joined.infohash,
                source=Source.DHT,
                vantage=self.settings.vantage,
                started_at=started,
                finished_at=started,
                peers_returned=count,
            )
        )

    def _hand_to_torrent(self, joined: _Joined, ip: IPAddress, port: int) -> None:
        """Give the torrent a peer our DHT lookup found, marked as learnt from the DHT.

        A peer not yet connected is then dialled, so its seed state is read like any
        other's. One already connected gains the DHT source flag: a peer that dialled
        us first carries only the incoming flag, and would be sighted as SWARM.
        """
        if self.settings.loopback_only and not is_loopback(str(ip)):
            return  # the ip_filter would refuse it too; not a destination under loopback_only
        if joined.handle.is_valid():
            joined.handle.connect_peer((str(ip), port), PEER_SOURCE_DHT)

    async def _on_external_ip(self, alert: Any, sink: SightingSink) -> None:
        # Our address as peers and trackers see it: an endpoint of ours (ownendpoints).
        self.own.add_address(str(alert.external_address))

    async def _on_listen_succeeded(self, alert: Any, sink: SightingSink) -> None:
        self.own.add(str(alert.address), int(alert.port))

    async def _on_tracker_reply(self, alert: Any, sink: SightingSink) -> None:
        # The peers themselves are sighted once connected (source flag tracker).
        self.stats.tracker_replies += 1

    async def _on_tracker_error(self, alert: Any, sink: SightingSink) -> None:
        # Not logged with its message: that names our endpoint and the tracker URL
        # (which may carry a passkey).
        self.stats.tracker_errors += 1

    async def _on_alerts_dropped(self, alert: Any, sink: SightingSink) -> None:
        self.stats.alerts_dropped += 1
        log.warning("libtorrent alert queue overflowed; alerts were dropped")

    async def _on_torrent_error(self, alert: Any, sink: SightingSink) -> None:
        joined = self._by_handle.get(alert.handle)
        self.stats.torrent_errors += 1
        log.warning(
            "swarm %s error: %s", joined.infohash[:8] if joined else "?", alert.error.message()
        )

    _handlers: dict[type, Callable[[SwarmSessionCrawler, Any, SightingSink], Awaitable[None]]] = {
        lt.metadata_received_alert: _on_metadata_received,
        lt.dht_get_peers_reply_alert: _on_dht_get_peers_reply,
        lt.tracker_reply_alert: _on_tracker_reply,
        lt.external_ip_alert: _on_external_ip,
        lt.listen_succeeded_alert: _on_listen_succeeded,
        lt.tracker_error_alert: _on_tracker_error,
        lt.alerts_dropped_alert: _on_alerts_dropped,
        lt.torrent_error_alert: _on_torrent_error,
    }


def _keep_unfinished(handle: Any) -> None:
    """Want one piece (at the lowest priority), which upload_mode never requests.

    A torrent that wants nothing is "finished", and a finished torrent never dials a
    seed (libtorrent's peer list drops seeds and upload-only peers from its connect
    candidates): a seed that closed its connection, or never kept one, would go
    unsighted for the rest of the crawl. Wanting a piece keeps the torrent
    "downloading" in libtorrent's eyes; upload_mode keeps it from ever asking for it
    (no interested message, no request), and the payload tripwire stays armed.
    """
    if handle.is_valid() and handle.torrent_file() is not None:
        handle.piece_priority(0, 1)


__all__ = ["MetadataCallback", "SwarmSessionCrawler", "SwarmSessionStats"]
