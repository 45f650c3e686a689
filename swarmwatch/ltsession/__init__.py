"""libtorrent swarm sessions: join registered swarms like a client, download nothing.

See crawler.py for how peers become sightings and how no payload moves.
"""

from __future__ import annotations

from swarmwatch.ltsession.crawler import MetadataCallback, SwarmSessionCrawler, SwarmSessionStats
from swarmwatch.ltsession.params import CRAWL_FLAGS, TorrentRefused, add_params, build_magnet
from swarmwatch.ltsession.session import new_session, session_settings

__all__ = [
    "CRAWL_FLAGS",
    "MetadataCallback",
    "SwarmSessionCrawler",
    "SwarmSessionStats",
    "TorrentRefused",
    "add_params",
    "build_magnet",
    "new_session",
    "session_settings",
]
