"""Tracker crawling: HTTP and UDP tracker clients behind one Protocol, and the crawler.

TrackerCrawler implements swarmwatch.crawl.Crawler; the clients return
AnnounceResult/ScrapeResult; every parse error is a TrackerResponseError.
"""

from __future__ import annotations

from swarmwatch.tracker.client import (
    AnnounceResult,
    CrawlIdentity,
    Event,
    ScrapeResult,
    ScrapeStats,
    TrackerClient,
)
from swarmwatch.tracker.crawler import TrackerCrawler
from swarmwatch.tracker.exceptions import (
    TrackerError,
    TrackerFailure,
    TrackerResponseError,
    TrackerTimeout,
    TrackerUnreachable,
)
from swarmwatch.tracker.http import HttpTrackerClient
from swarmwatch.tracker.udp import UdpTrackerClient

__all__ = [
    "AnnounceResult",
    "CrawlIdentity",
    "Event",
    "HttpTrackerClient",
    "ScrapeResult",
    "ScrapeStats",
    "TrackerClient",
    "TrackerCrawler",
    "TrackerError",
    "TrackerFailure",
    "TrackerResponseError",
    "TrackerTimeout",
    "TrackerUnreachable",
    "UdpTrackerClient",
]
