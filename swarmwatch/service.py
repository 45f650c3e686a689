"""The crawl service: registered torrents → crawlers → pipeline → database.

Runs inside `swarmwatch serve` (attached to the API's lifespan) or alone as
`swarmwatch crawl`. Crawlers and the pipeline are wired here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from swarmwatch import registry
from swarmwatch.config import Settings
from swarmwatch.crawl import Crawler, WatchedTorrent
from swarmwatch.store import Database

log = logging.getLogger(__name__)


def registered_torrents(db: Database) -> Any:
    """A TorrentSource reading the registry each round (new registrations are picked up)."""

    async def source() -> list[WatchedTorrent]:
        def read() -> list[WatchedTorrent]:
            with db.session() as session:
                return registry.watched_torrents(session)

        return await asyncio.to_thread(read)

    return source


def build_crawlers(settings: Settings, db: Database) -> list[Crawler]:
    """Every crawler this build has (filled in as the crawler parts land)."""
    return []


async def run_crawlers(
    settings: Settings, db: Database, stop: asyncio.Event, crawlers: list[Crawler] | None = None
) -> None:
    """Run the crawlers into the pipeline until stop is set, then flush the pipeline."""
    crawlers = build_crawlers(settings, db) if crawlers is None else crawlers
    if not crawlers:
        log.warning("no crawlers available in this build")
        await stop.wait()
        return
    raise NotImplementedError("pipeline not wired yet")


def attach_crawl_service(app: FastAPI, settings: Settings, db: Database) -> None:
    """Run the crawlers for as long as the API serves."""
    parent = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_crawlers(settings, db, stop), name="crawl-service")
        async with parent(application) as state:
            yield state
        stop.set()
        await task

    app.router.lifespan_context = lifespan
