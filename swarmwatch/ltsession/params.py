"""How a registered swarm is added to the crawling session: magnet or info dict, made safe.

Every torrent joins with flags that forbid payload transfer (see CRAWL_FLAGS), and
under loopback_only every tracker, DHT node and magnet peer off loopback is dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import libtorrent as lt

from swarmwatch.crawl import WatchedTorrent
from swarmwatch.netsafety import DestinationRefused, check_destination

log = logging.getLogger(__name__)

#: The guarantee that no payload moves, flag by flag:
#: - upload_mode: libtorrent never sends a piece request, so no payload is downloaded;
#:   and as we hold no piece, there is nothing we could upload.
#: - share_mode: libtorrent then does not announce "upload_only" (BEP 21) to peers,
#:   so seeds keep us connected and we can read their seed state instead of being
#:   dropped as a redundant upload-to-upload connection.
#: - default_dont_download: every file has priority 0 once metadata arrives; the crawler
#:   then wants one piece back (crawler._keep_unfinished: a torrent that wants nothing
#:   never dials a seed), which upload_mode never requests.
#: - auto_managed is left out: the session would otherwise take the torrent out of
#:   upload mode on its own (it treats upload mode as a disk-error back-off).
#: - disable_lsd: local service discovery multicasts, and a crawler has no LAN peers.
#: - apply_ip_filter: part of libtorrent's default flags, which these flags replace;
#:   without it the session's ip_filter (the loopback guard) does not apply to the
#:   torrent's peers, and a peer from a tracker, PEX or the DHT would be connected.
CRAWL_FLAGS = (
    lt.torrent_flags.upload_mode
    | lt.torrent_flags.share_mode
    | lt.torrent_flags.default_dont_download
    | lt.torrent_flags.disable_lsd
    | lt.torrent_flags.apply_ip_filter
)


class TorrentRefused(ValueError):
    """A WatchedTorrent that cannot be joined (no infohash, unparsable magnet or info)."""


def build_magnet(torrent: WatchedTorrent) -> str:
    """A BEP 9 magnet URI from the infohashes and trackers (BEP 9 xt, BEP 52 btmh)."""
    parts: list[str] = []
    if torrent.infohash_v1:
        parts.append(f"xt=urn:btih:{torrent.infohash_v1.lower()}")
    if torrent.infohash_v2:
        # 0x12 0x20: multihash code and length of SHA-256 (BEP 52, magnet section).
        parts.append(f"xt=urn:btmh:1220{torrent.infohash_v2.lower()}")
    if not parts:
        raise TorrentRefused("torrent has no infohash")
    parts.extend(f"tr={quote(url, safe='')}" for url, _tier in torrent.trackers)
    return "magnet:?" + "&".join(parts)


def add_params(torrent: WatchedTorrent, save_path: Path, *, loopback_only: bool) -> Any:
    """libtorrent add_torrent_params for joining this swarm as a crawler."""
    try:
        if torrent.info is not None:
            # A one-key dict around the raw info bytes keeps the infohash exact.
            atp = lt.load_torrent_buffer(b"d4:info" + torrent.info + b"e")
        else:
            atp = lt.parse_magnet_uri(torrent.magnet or build_magnet(torrent))
    except RuntimeError as exc:  # libtorrent's parse errors; they name no peer
        raise TorrentRefused(f"cannot parse torrent {torrent.infohash[:8]}: {exc}") from None

    trackers: list[tuple[str, int]] = []
    seen: set[str] = set()
    parsed = list(
        zip(atp.trackers, list(atp.tracker_tiers) or [0] * len(atp.trackers), strict=False)
    )
    for url, tier in [*parsed, *torrent.trackers]:
        if url in seen:
            continue
        seen.add(url)
        if _allowed(urlsplit(url).hostname or "", loopback_only, "tracker"):
            trackers.append((url, tier))
    atp.trackers = [url for url, _ in trackers]
    atp.tracker_tiers = [tier for _, tier in trackers]
    atp.peers = [ep for ep in atp.peers if _allowed(ep[0], loopback_only, "magnet peer")]
    atp.dht_nodes = [n for n in atp.dht_nodes if _allowed(n[0], loopback_only, "DHT node")]
    # Web seeds serve nothing but payload, which a crawler never fetches.
    atp.url_seeds = []
    atp.http_seeds = []
    atp.save_path = str(save_path)
    atp.flags = CRAWL_FLAGS
    return atp


def _allowed(host: str, loopback_only: bool, what: str) -> bool:
    try:
        check_destination(host, loopback_only=loopback_only, what=what)
    except DestinationRefused:
        # Count, don't name: a magnet peer is a peer address.
        log.warning("dropped a %s outside loopback (loopback_only is on)", what)
        return False
    return True


__all__ = ["CRAWL_FLAGS", "TorrentRefused", "add_params", "build_magnet"]
