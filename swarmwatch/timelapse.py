"""Export a study's time-lapse for a paper or a talk: one offline HTML file, or PNG frames.

The HTML file is the web map itself (web/) with plotly.js, the Natural Earth basemap,
the hexagon outlines and the k-suppressed frames inlined: it plays from a USB stick
with no network. PNG frames are screenshots of that file in headless Chromium.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from swarmwatch.api.routes.web import WEB_DIR, outlines_with_population, plotly_bundle
from swarmwatch.store import Database
from swarmwatch.store.models import City, Study

log = logging.getLogger(__name__)

#: Debian's Chromium (the test script installs it); Playwright drives it, never downloads one.
CHROMIUM_PATH = "/usr/bin/chromium"
#: Headless, offline, no background traffic to Google: nothing may leave loopback.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)

#: True once the map has drawn its first frame (the page's test and benchmark hook).
READY = "window.swarmwatchMap !== undefined && window.swarmwatchMap.ready"


class TimelapseError(Exception):
    """The time-lapse cannot be exported (unknown study, no published frames, no browser)."""


def timelapse_data(
    db: Database,
    study_id: int,
    *,
    interval: int = 3600,
    res: int = 4,
    title: str | None = None,
    metric: str = "absolute",
) -> dict[str, Any]:
    """What the map needs, as the API publishes it: the study, frames and outlines.

    Frames come from the same k-suppressed computation as
    GET /api/v1/studies/{id}/frames?format=compact; outlines and populations as from
    POST /api/v1/geometry/h3.
    """
    from sqlalchemy import select

    from swarmwatch.analysis.frames import compute_compact_frames
    from swarmwatch.analysis.scope import ScopeError, resolve_scope

    with db.session() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise TimelapseError(f"study {study_id} not found")
        try:
            scope = resolve_scope(session.connection(), study, title=title)
            frames = compute_compact_frames(session.connection(), scope, interval=interval, res=res)
        except ScopeError as exc:
            raise TimelapseError(str(exc)) from None
        cells = frames["cells"]  # every published cell of the time-lapse, once
        features = outlines_with_population(session, cells)
        city_ids = {c["geoname_id"] for c in frames["cities"]}
        city_population = {
            str(gid): int(pop or 0)
            for gid, pop in session.execute(
                select(City.geoname_id, City.population).where(City.geoname_id.in_(city_ids))
            )
        }
        study_public = {
            "id": study.id,
            "name": study.name,
            "description": study.description or "",
            "k_threshold": study.k_threshold,
            "titles": [{"id": t.id, "name": t.name} for t in study.titles],
        }
    return {
        "study": study_public,
        "interval": interval,
        "res": res,
        "title": title,
        "metric": metric,
        # The compact form of GET .../frames?format=compact, as the page reads it.
        "format": frames["format"],
        "cells": frames["cells"],
        "cities": frames["cities"],
        "metros": frames["metros"],  # the per-capita view's bubbles
        "frames": frames["frames"],
        "method": frames["method"],
        "outlines": {
            "type": "FeatureCollection",
            "features": features,
            "city_population": city_population,
        },
    }


def _script(text: str) -> str:
    # Inline scripts end at the first "</script": keep any such text out of the data.
    return "<script>" + text.replace("</", "<\\/") + "</script>"


def render_html(data: dict[str, Any]) -> str:
    """The web map as one self-contained page playing `data` (see timelapse_data)."""
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    css = (WEB_DIR / "style.css").read_text(encoding="utf-8")
    app = (WEB_DIR / "app.js").read_text(encoding="utf-8")
    topojson = (WEB_DIR / "topojson" / "world_110m.json").read_text(encoding="utf-8")
    plotly_js = plotly_bundle()[0].decode()
    # plotly looks in PlotlyGeoAssets before fetching its basemap: give it the one we ship.
    assets = f"window.PlotlyGeoAssets = {{topojson: {{world_110m: {topojson}}}}};"
    embed = "window.SWARMWATCH_TIMELAPSE = " + json.dumps(data, separators=(",", ":")) + ";"
    page = page.replace('<link rel="stylesheet" href="/web/style.css">', f"<style>{css}</style>")
    page = re.sub(r'\s*<script src="/web/[^"]+" defer></script>', "", page)
    title = f"{data['study']['name']} — swarmwatch time-lapse"
    page = re.sub(r"<title>.*?</title>", lambda _: f"<title>{_html_escape(title)}</title>", page)
    scripts = "\n".join(
        [_script(assets), "<script>" + plotly_js + "</script>", _script(embed), _script(app)]
    )
    return page.replace("</body>", scripts + "\n</body>")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def export_html(
    db: Database,
    study_id: int,
    out_path: str | Path,
    *,
    interval: int = 3600,
    res: int = 4,
    title: str | None = None,
    metric: str = "absolute",
) -> Path:
    """Write the study's time-lapse as one HTML file that plays offline; return its path."""
    data = timelapse_data(db, study_id, interval=interval, res=res, title=title, metric=metric)
    if not data["frames"]:
        raise TimelapseError(f"study {study_id} has no published frames to export")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    log.info("time-lapse of study %d: %d frames -> %s", study_id, len(data["frames"]), out)
    return out


@contextmanager
def chromium_page(width: int = 1280, height: int = 720, scale: float = 1.0) -> Iterator[Any]:
    """A Playwright page in Debian's headless Chromium, with a fresh profile.

    `scale` is the device pixel ratio: screenshots are width*scale x height*scale pixels.

    Playwright is a test extra (``pip install swarmwatch[test]``): imported here only.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise TimelapseError(
            "PNG frames need Playwright: pip install playwright (it drives "
            f"{CHROMIUM_PATH}; no browser download)"
        ) from None
    if not Path(CHROMIUM_PATH).exists():
        raise TimelapseError(
            f"PNG frames need Chromium at {CHROMIUM_PATH}: apt-get install chromium"
        )
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM_PATH,
            args=list(CHROMIUM_ARGS),
            headless=True,
            viewport={"width": width, "height": height},
            device_scale_factor=scale,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def export_png_frames(
    db: Database,
    study_id: int,
    out_dir: str | Path,
    *,
    interval: int = 3600,
    res: int = 4,
    title: str | None = None,
    metric: str = "absolute",
    width: int = 1280,
    height: int = 720,
) -> list[Path]:
    """One PNG per frame (frame_0000.png, ...): the map with its legend and time label.

    Made from the exported HTML in headless Chromium; for a video, e.g.
    ``ffmpeg -framerate 4 -i frame_%04d.png -pix_fmt yuv420p timelapse.mp4``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page_file = export_html(
        db, study_id, out / "timelapse.html", interval=interval, res=res, title=title, metric=metric
    )
    paths: list[Path] = []
    with chromium_page(width, height) as page:
        page.goto(page_file.resolve().as_uri())
        page.wait_for_function(READY, timeout=120_000)
        count = int(page.evaluate("window.swarmwatchMap.frameCount"))
        panel = page.locator("#mapPanel")
        for i in range(count):
            page.evaluate("(i) => window.swarmwatchMap.showFrame(i)", i)
            path = out / f"frame_{i:04d}.png"
            panel.screenshot(path=str(path))
            paths.append(path)
    log.info("time-lapse of study %d: %d PNG frames in %s", study_id, len(paths), out)
    return paths


__all__ = [
    "CHROMIUM_ARGS",
    "CHROMIUM_PATH",
    "READY",
    "TimelapseError",
    "chromium_page",
    "export_html",
    "export_png_frames",
    "render_html",
    "timelapse_data",
]
