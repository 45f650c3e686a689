"""Time-lapse exports: one HTML file that plays with no network, and PNG frames."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmwatch.store import Database
from swarmwatch.timelapse import READY, TimelapseError, export_html, export_png_frames
from tests.web_browser import CITIES, FRAMES, build_known_study, chromium, screenshot

pytestmark = pytest.mark.slow


def test_exported_html_plays_offline(db: Database, tmp_path: Path) -> None:
    known = build_known_study(db)
    out = export_html(db, known.id, tmp_path / "talk" / "timelapse.html")
    text = out.read_text("utf-8")
    assert "http://" not in text.split("<script>")[0]  # the page part names no host

    with chromium() as browser:
        page = browser.page
        page.goto(out.as_uri())
        page.wait_for_function(READY, timeout=60_000)
        assert page.evaluate("window.swarmwatchMap.frameCount") == FRAMES
        assert page.evaluate("window.swarmwatchMap.cellCount") == len(CITIES)
        first = page.evaluate("window.swarmwatchMap.painted()")
        page.evaluate("window.swarmwatchMap.showFrame(3)")
        assert page.locator("#frameUtc").inner_text() == "Mon, 17 Jul 2017, 03:00 UTC"
        assert page.evaluate("window.swarmwatchMap.painted()") != first
        assert page.locator("#rankPanel").is_hidden()  # no server: no ranking, no CSV
        screenshot(browser, "timelapse_export.png")

    # Only the file itself: plotly.js, the basemap and the data are all inside it.
    assert browser.requests == [out.as_uri()]
    assert browser.console_errors == []


def test_png_frames(db: Database, tmp_path: Path) -> None:
    known = build_known_study(db)
    paths = export_png_frames(db, known.id, tmp_path / "frames", width=900, height=600)
    assert [p.name for p in paths] == [f"frame_{i:04d}.png" for i in range(FRAMES)]
    images = [p.read_bytes() for p in paths]
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 10_000 for b in images)
    assert len(set(images)) == FRAMES  # every frame looks different (label and colours)


def test_nothing_to_export(db: Database, tmp_path: Path) -> None:
    from swarmwatch.registry import create_study

    with db.session() as session:
        empty = create_study(session, "empty", titles=["E1"])
        session.flush()
        empty_id = empty.id
    with pytest.raises(TimelapseError, match="no published frames"):
        export_html(db, empty_id, tmp_path / "x.html")
    with pytest.raises(TimelapseError, match="not found"):
        export_html(db, 424242, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
