"""Test helpers for the web map: a known dataset through the real rollups, and a
headless Chromium that records every request and console error."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h3
import pytest

from swarmwatch import PROJECT_ROOT
from swarmwatch.registry import create_study
from swarmwatch.sightings import AnonymousSighting
from swarmwatch.store import Database
from swarmwatch.store.models import City
from swarmwatch.store.rollups import apply_batch
from swarmwatch.timelapse import CHROMIUM_ARGS, CHROMIUM_PATH

#: Screenshots go here (git-ignored); CI can collect them.
ARTIFACTS = Path(os.environ.get("SWARMWATCH_ARTIFACTS", PROJECT_ROOT / "artifacts"))

# (geoname_id, name, country, lat, lon, population): real GeoNames places, far apart,
# so each is alone in its H3 cell at every frame resolution.
CITIES = [
    (2643743, "London", "GB", 51.50853, -0.12574, 8_961_989),
    (2988507, "Paris", "FR", 48.85341, 2.3488, 2_138_551),
    (1850147, "Tokyo", "JP", 35.6895, 139.69171, 8_336_599),
    (5128581, "New York City", "US", 40.71427, -74.00597, 8_804_190),
    (3448439, "São Paulo", "BR", -23.5475, -46.63611, 10_021_295),
    (2147714, "Sydney", "AU", -33.86785, 151.20732, 4_627_345),
    (3413829, "Reykjavik", "IS", 64.13548, -21.89541, 118_918),
    (5803329, "Milton", "US", 47.24927, -122.31262, 7_800),  # below the per-capita floor
]
START = datetime(2017, 7, 17, tzinfo=UTC)
FRAMES = 6


def active_peers(city: int, frame: int) -> int:
    """Peers of city `city` active in hourly frame `frame`: 8..27, different every hour
    (at least k + 3, so the public's cell-key noise never withholds one)."""
    return 8 + (city * 7 + frame * 3) % 20


@dataclass
class KnownStudy:
    id: int
    title_id: int


def build_known_study(db: Database, name: str = "known swarm") -> KnownStudy:
    """FRAMES hourly frames of CITIES, written through the real ingest-side rollups."""
    with db.session() as session:
        for gid, cname, country, lat, lon, pop in CITIES:
            if session.get(City, gid) is None:
                session.add(
                    City(
                        geoname_id=gid,
                        name=cname,
                        country=country,
                        lat=lat,
                        lon=lon,
                        population=pop,
                        metro_id=gid,
                    )
                )
        study = create_study(session, name, titles=["S07E01"])
        session.flush()
        known = KnownStudy(study.id, study.titles[0].id)
    batch: list[AnonymousSighting] = []
    seen: set[bytes] = set()
    for f in range(FRAMES):
        at = START + timedelta(hours=f, minutes=10)
        for c, (gid, _, country, lat, lon, _pop) in enumerate(CITIES):
            for j in range(active_peers(c, f)):
                key = hashlib.blake2b(f"{known.id}:{gid}:{j}".encode(), digest_size=32).digest()
                batch.append(
                    AnonymousSighting(
                        study_id=known.id,
                        title_id=known.title_id,
                        torrent_id=0,
                        peer_key=key,
                        seen_at=at,
                        source="tracker",
                        vantage="test",
                        seed=j % 3 == 0,
                        country=country,
                        geoname_id=gid,
                        metro_id=gid,
                        h3_cell=h3.str_to_int(h3.latlng_to_cell(lat, lon, 7)),
                        asn=None,
                        new_peer=key not in seen,
                    )
                )
                seen.add(key)
    with db.engine.begin() as conn:
        apply_batch(conn, batch)
    return known


@dataclass
class Browser:
    """A page plus everything it asked for and complained about."""

    page: Any
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def foreign_requests(self, allowed_netloc: str | None) -> list[str]:
        """Requests to anything but the server under test (or, for files, anything at all)."""
        out = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                continue
            if parts.scheme == "file" and allowed_netloc is None:
                continue
            if parts.netloc != allowed_netloc or parts.hostname not in ("127.0.0.1", "localhost"):
                out.append(url)
        return out


@contextmanager
def chromium(width: int = 1400, height: int = 850) -> Iterator[Browser]:
    """Debian's headless Chromium through Playwright; requests off this machine are
    recorded (for the test to fail on) and refused (so none ever leaves)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM_PATH).exists():
        pytest.skip(f"{CHROMIUM_PATH} missing: apt-get install chromium")
    import tempfile

    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM_PATH,
            args=list(CHROMIUM_ARGS),
            headless=True,
            viewport={"width": width, "height": height},
            accept_downloads=True,
            timezone_id="Asia/Tokyo",  # the page's "local time" is then UTC+9
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            browser = Browser(page)

            def guard(route: Any) -> None:
                url = route.request.url
                browser.requests.append(url)
                parts = urlsplit(url)
                local = parts.scheme in ("file", "data", "blob") or parts.hostname in (
                    "127.0.0.1",
                    "localhost",
                )
                if local:
                    route.continue_()
                else:
                    route.abort()

            context.route("**/*", guard)
            page.on(
                "console",
                lambda m: browser.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on(
                "pageerror",
                lambda e: browser.console_errors.append(f"page error: {e.stack}"),
            )
            yield browser
        finally:
            context.close()


def screenshot(browser: Browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    browser.page.screenshot(path=str(path), full_page=True)
    return path
