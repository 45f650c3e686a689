"""The web map in a real headless Chromium against a real server over a known dataset."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from swarmwatch.store import Database
from tests.web_browser import (
    CITIES,
    FRAMES,
    KnownStudy,
    add_frame,
    build_known_study,
    chromium,
    screenshot,
)

pytestmark = pytest.mark.slow

READY = "window.swarmwatchMap !== undefined && window.swarmwatchMap.ready"


@pytest.fixture
def known(db: Database) -> KnownStudy:
    return build_known_study(db)


@pytest.fixture
def api(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as c:  # no key: what the page sees
        yield c


def api_frames(api: httpx.Client, study_id: int) -> list[dict[str, Any]]:
    r = api.get(f"/api/v1/studies/{study_id}/frames", params={"interval": 3600, "res": 4})
    r.raise_for_status()
    frames: list[dict[str, Any]] = r.json()["frames"]
    return frames


def expected_values(frame: dict[str, Any], ids: list[str]) -> list[int | None]:
    peers = {c["h3"]: c["peers"] for c in frame["cells"]}
    return [peers.get(i) for i in ids]


def test_map_plays_switches_to_per_capita_and_downloads_csv(
    live_server: str, known: KnownStudy, api: httpx.Client
) -> None:
    frames = api_frames(api, known.id)
    assert len(frames) == FRAMES
    assert all(len(f["cells"]) == len(CITIES) for f in frames)  # every city published

    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/?study={known.id}")
        page.wait_for_function(READY, timeout=60_000)
        assert page.locator("#message").is_hidden()
        assert page.locator("#frameUtc").inner_text() == "Mon, 17 Jul 2017, 00:00 UTC"
        assert page.locator("#frameCount").inner_text() == f"frame 1 / {FRAMES}"

        ids: list[str] = page.evaluate("window.swarmwatchMap.ids")
        assert sorted(ids) == sorted(c["h3"] for c in frames[0]["cells"])
        assert page.evaluate("window.swarmwatchMap.values()") == expected_values(frames[0], ids)
        painted_first = page.evaluate("window.swarmwatchMap.painted()")
        assert sum(1 for d in painted_first if d) >= 2  # hexagons in several colours

        # Play, let it advance two frames, pause.
        page.get_by_role("button", name="play").click()
        page.wait_for_function("window.swarmwatchMap.index >= 2", timeout=30_000)
        page.get_by_role("button", name="pause").click()
        index = page.evaluate("window.swarmwatchMap.index")
        page.wait_for_timeout(300)  # paused: the frame stays
        assert page.evaluate("window.swarmwatchMap.index") == index
        label = page.locator("#frameUtc").inner_text()
        assert label == f"Mon, 17 Jul 2017, {index:02d}:00 UTC"
        local = page.locator("#frameLocal").inner_text()
        assert local.startswith("local Mon") and f"{index + 9:02d}:00" in local, local
        values = page.evaluate("window.swarmwatchMap.values()")
        assert values == expected_values(frames[index], ids)
        assert values != expected_values(frames[0], ids)
        assert page.evaluate("window.swarmwatchMap.painted()") != painted_first
        assert page.locator("#slider").input_value() == str(index)

        # The ranking table is the API's ranking.
        ranking = api.get(f"/api/v1/studies/{known.id}/rankings", params={"limit": 25}).json()
        table = page.locator("#ranking tbody tr")
        assert table.count() == len(ranking["rows"]) == len(CITIES)
        assert table.nth(0).locator("td").nth(1).inner_text() == ranking["rows"][0]["place"]

        # Per capita: the colours become peers per 100k residents of the cell, and the
        # table ranks metro areas with peers, rate and its 95 % interval side by side.
        assert page.locator("#rankValueHead").is_hidden()
        page.get_by_label("per capita").check()
        page.wait_for_function(
            "window.swarmwatchMap.ready && !document.querySelector('#rankValueHead').hidden"
            " && document.querySelectorAll('#ranking tbody tr td').length > 6",
            timeout=30_000,
        )
        assert page.locator("#level").input_value() == "metro"
        assert page.locator("#rankPlaceHead").inner_text() == "Metro area"
        assert "per 100,000 inhabitants" in page.locator("#map .cbtitle").text_content()
        outlines = api.post("/api/v1/geometry/h3", json={"cells": ids}).json()
        population = {f["id"]: f["properties"]["population"] for f in outlines["features"]}
        per_capita = page.evaluate("window.swarmwatchMap.values()")
        for cell, peers, shown in zip(
            ids, expected_values(frames[index], ids), per_capita, strict=True
        ):
            pop = population[cell]
            if pop >= 100_000:
                assert shown == pytest.approx(peers * 100_000 / pop)
            else:
                assert shown is None  # Milton: below the per-capita floor, not drawn
        assert sum(v is None for v in per_capita) == 1

        # The CSV button downloads the API's per-capita ranking.
        with page.expect_download() as download_info:
            page.locator("#csv").click()
        rows = list(csv.DictReader(io.StringIO(download_info.value.path().read_text("utf-8"))))
        json_rows = api.get(
            f"/api/v1/studies/{known.id}/rankings",
            params={"metric": "per_capita", "level": "metro", "limit": 100_000},
        ).json()["rows"]
        assert [(r["place"], int(r["peers"])) for r in rows] == [
            (r["place"], r["peers"]) for r in json_rows
        ]
        assert len(rows) == len(CITIES) - 1  # Milton is below min_population
        table = page.locator("#ranking tbody tr")
        assert table.locator("td:nth-child(2)").all_inner_texts() == [r["place"] for r in json_rows]
        # Each row: the count, the rate and the API's 95 % interval around it.
        first = table.nth(0).locator("td").all_inner_texts()
        top = json_rows[0]
        assert first[3] == str(top["peers"])
        assert first[4] == f"{top['per_100k']:.2g}" or float(first[4]) == pytest.approx(
            top["per_100k"], rel=0.05
        )
        low, high = (float(x.replace(",", "")) for x in first[5].split("–"))
        assert low == pytest.approx(top["ci_low"], rel=0.05)
        assert high == pytest.approx(top["ci_high"], rel=0.05)
        assert low <= float(first[4].replace(",", "")) <= high

        shot = screenshot(browser, "web_map_per_capita.png")
        assert shot.stat().st_size > 10_000

    netloc = urlsplit(live_server).netloc
    assert browser.foreign_requests(netloc) == []
    assert any(u.endswith("/web/plotly.min.js") for u in browser.requests)
    assert any(u.endswith("/web/topojson/world_110m.json") for u in browser.requests)
    assert browser.console_errors == []


def test_empty_and_unknown_studies_say_so(live_server: str, db: Database) -> None:
    from swarmwatch.registry import create_study

    with db.session() as session:
        empty = create_study(session, "nothing crawled yet", titles=["E1"])
        session.flush()
        empty_id = empty.id

    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/?study={empty_id}")
        message = page.locator("#message")
        message.wait_for(state="visible")
        page.wait_for_function("!document.querySelector('#message').textContent.startsWith('Load')")
        assert "no published frames yet" in message.inner_text()
        assert page.locator("#main").is_hidden()

        page.goto(f"{live_server}/?study=987654")
        page.wait_for_function(
            "document.querySelector('#message').textContent.includes('987654')", timeout=30_000
        )
        assert "not among the public studies" in message.inner_text()
        screenshot(browser, "web_map_unknown_study.png")

    assert browser.foreign_requests(urlsplit(live_server).netloc) == []
    assert browser.console_errors == []


def test_web_assets_are_local_and_safe(live_server: str, api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # The page loads nothing from another host: every asset is on this server (the
    # only URL in it is MaxMind's, in the credit its licence asks for, as text).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert page.text.count("https://") == 1 and "https://www.maxmind.com" in page.text
    js = api.get("/web/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert js.status_code == 200 and js.headers["content-encoding"] == "gzip"
    assert len(js.content) > 1_000_000  # httpx decompressed it: the real bundle
    again = api.get("/web/plotly.min.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304
    for bad in ("/web/../pyproject.toml", "/web/%2e%2e/pyproject.toml", "/web/nope.js"):
        assert api.get(bad).status_code == 404, bad
    bad_ids = api.post("/api/v1/geometry/h3", json={"cells": ["zzzzzzzzzzzzzzz"]})
    assert bad_ids.status_code == 422
    wrapped = api.post("/api/v1/geometry/h3", json={"cells": ["87f2ca6dcffffff"]})
    ring = wrapped.json()["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 7


# The map's box, the land plotly drew in it, and the overlays a viewer reads.
_LAYOUT_JS = """() => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return [r.left, r.top, r.width, r.height];
  };
  const all = (q) => [...document.querySelectorAll(q)];
  const rects = all('#map .geo .land')
    .map((p) => p.getBoundingClientRect()).filter((r) => r.width > 0);
  const union = rects.length ? [
    Math.min(...rects.map((r) => r.left)), Math.min(...rects.map((r) => r.top)),
    Math.max(...rects.map((r) => r.right)), Math.max(...rects.map((r) => r.bottom))] : null;
  return {map: box(document.getElementById('map')), land: union,
    minimum: document.querySelector('#map g.swarmwatch-colors').dataset.minimumSize,
    painted: all('#map g.swarmwatch-colors path').filter((p) => p.getAttribute('d')).length,
    labels: all('#map g.swarmwatch-labels text').map((t) => t.textContent),
    legend: all('#bubbleLegend circle').length};
}"""


def test_map_fills_its_panel_and_says_what_it_shows(
    live_server: str, known: KnownStudy, db: Database
) -> None:
    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/?study={known.id}")
        page.wait_for_function(READY, timeout=60_000)
        layout = page.evaluate(_LAYOUT_JS)
        left, top, width, height = layout["map"]
        # The world fills the map's box: no blank bands above or below, no side bands.
        assert layout["land"] is not None
        l0, t0, r0, b0 = layout["land"]
        assert r0 - l0 >= 0.9 * width, (layout["land"], layout["map"])
        assert b0 - t0 >= 0.8 * height, (layout["land"], layout["map"])
        assert t0 - top <= 0.1 * height and (top + height) - b0 <= 0.1 * height
        # Hexagons (a pixel or two at world zoom) are drawn as 3 px squares...
        assert layout["minimum"] == "squares" and layout["painted"] >= 2
        # ... labels name the biggest bubbles, and a legend gives bubble sizes.
        assert set(layout["labels"]) >= {"Tokyo", "São Paulo", "New York City"}
        # London and Paris are close at world zoom: one label, not two on top of each other.
        assert len({"London", "Paris"} & set(layout["labels"])) == 1
        assert layout["legend"] >= 2
        # The study's name and window as a title, credits in the map's own box, and no
        # simulated-data notice for a study that is not simulated.
        assert page.locator("#studyName").inner_text() == "known swarm"
        assert (
            page.locator("#studyWindow")
            .inner_text()
            .startswith("17 Jul 2017, 00:00 – 17 Jul 2017, 06:00 UTC")
        )
        credits = page.locator("#credits").inner_text()
        for name in ("GeoLite2", "MaxMind", "CC BY-SA", "GeoNames", "Natural Earth"):
            assert name in credits
        assert page.locator("#simNotice").is_hidden()
        # Scroll zooms the map (plotly's geo zoom on the wheel), drag pans it.
        assert page.evaluate("document.getElementById('map')._context.scrollZoom")
        # The play button draws its icon: no glyph that Debian's fonts may lack.
        assert page.locator("#play").inner_text().strip() == "Play"
        page.get_by_role("button", name="play").click()
        assert page.locator("#play").inner_text().strip() == "Pause"
        page.get_by_role("button", name="pause").click()
        screenshot(browser, "web_map_world.png")

        # Zoom to a region: the projection scales up, the minimum hexagon size gives way.
        page.select_option("#region", "europe")
        page.wait_for_function(
            "document.getElementById('map')._fullLayout.geo.projection.scale > 4", timeout=30_000
        )
        page.evaluate("window.swarmwatchMap.showFrame(1)")
        zoomed = page.evaluate(_LAYOUT_JS)
        assert "London" in zoomed["labels"] and "Tokyo" not in zoomed["labels"]
        assert zoomed["minimum"] == "" and zoomed["painted"] >= 1  # big enough as they are
        screenshot(browser, "web_map_europe.png")

    from swarmwatch.demo import SIMULATED_TAG
    from swarmwatch.store.models import Study

    with db.session() as session:
        study = session.get(Study, known.id)
        assert study is not None
        study.description = f"{SIMULATED_TAG} a demo"
    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/?study={known.id}")
        page.wait_for_function(READY, timeout=60_000)
        assert page.locator("#simNotice").is_visible()
        assert "Simulated data" in page.locator("#simNotice").inner_text()
        assert page.locator("#simBadge").is_visible()
    assert browser.console_errors == []


def test_live_page_shows_new_frames_and_ranking_without_reload(
    live_server: str, known: KnownStudy, db: Database
) -> None:
    with chromium() as browser:
        page = browser.page
        page.add_init_script("window.SWARMWATCH_POLL_MS = 300")
        statuses: list[int] = []
        page.on("response", lambda r: statuses.append(r.status) if "/frames?" in r.url else None)
        page.goto(f"{live_server}/?study={known.id}")
        page.wait_for_function(READY, timeout=60_000)
        page.evaluate(f"window.swarmwatchMap.showFrame({FRAMES - 1})")  # watching the newest
        page.evaluate("window.notReloaded = true")
        first_place = page.locator("#ranking tbody tr").nth(0).locator("td").nth(1).inner_text()
        assert first_place != "Milton"
        # Unchanged data: the polls are answered 304 (the ETag matched), nothing redrawn.
        page.wait_for_function("window.swarmwatchMap.updates === 0", timeout=5_000)
        deadline = 50
        while statuses.count(304) < 2 and deadline:
            page.wait_for_timeout(200)
            deadline -= 1
        assert statuses.count(304) >= 2, statuses

        # The crawl goes on: a new hour, with a crowd in Milton.
        add_frame(db, known, FRAMES, city=7, peers=300)
        page.wait_for_function(
            f"window.swarmwatchMap.frameCount === {FRAMES + 1}"
            f" && window.swarmwatchMap.index === {FRAMES}",
            timeout=30_000,
        )
        page.wait_for_function(
            "document.querySelector('#ranking tbody tr td:nth-child(2)').textContent === 'Milton'",
            timeout=30_000,
        )
        assert page.evaluate("window.notReloaded") is True
        assert page.evaluate("window.swarmwatchMap.updates") >= 1
        assert page.locator("#frameCount").inner_text() == f"frame {FRAMES + 1} / {FRAMES + 1}"
        screenshot(browser, "web_map_live.png")
    assert browser.console_errors == []


def test_live_polls_cost_a_304_each(live_server: str, known: KnownStudy) -> None:
    """What the page's poll costs the server when nothing changed: a bodiless 304, for
    every viewer, frames and ranking alike."""
    import concurrent.futures

    urls = [
        f"/api/v1/studies/{known.id}/frames?interval=3600&res=4&format=compact",
        f"/api/v1/studies/{known.id}/rankings?level=city&metric=absolute&limit=25",
    ]
    with httpx.Client(base_url=live_server, timeout=60) as client:
        tags = {url: client.get(url).headers["etag"] for url in urls}

        def poll(url: str) -> tuple[int, int]:
            r = client.get(url, headers={"If-None-Match": tags[url]})
            return r.status_code, len(r.content)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(poll, urls * 40))
    assert answers == [(304, 0)] * 80


def test_per_capita_view_shows_metro_areas_with_their_intervals(
    live_server: str, known: KnownStudy, db: Database, api: httpx.Client
) -> None:
    """Per capita, the bubbles are metro areas of the API's minimum population (not the
    cities of the absolute view), as the public reads them, and the tooltip gives the
    rate's 95 % interval."""
    from sqlalchemy import update

    from swarmwatch.store.models import Metro

    # Name each metro apart from its core city, so the map shows which of the two it drew.
    with db.session() as session:
        for gid, name, *_ in CITIES:
            session.execute(update(Metro).where(Metro.id == gid).values(name=f"Greater {name}"))
    frames = api_frames(api, known.id)  # the public's read, as the page's
    metros = [{m["name"]: m for m in f["top_metros"]} for f in frames]
    # Milton (7,800 residents) is below DEFAULT_MIN_POPULATION: never a per-capita bubble.
    assert all(set(m) == {f"Greater {c[1]}" for c in CITIES[:-1]} for m in metros)

    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/?study={known.id}")
        page.wait_for_function(READY, timeout=60_000)
        absolute = page.evaluate("window.swarmwatchMap.bubbles()")
        assert {b["name"] for b in absolute} >= {"London", "Tokyo"}  # cities, absolute
        page.get_by_label("per capita").check()
        page.wait_for_function(
            "window.swarmwatchMap.ready && window.swarmwatchMap.bubbles()"
            ".every((b) => b.name.startsWith('Greater '))",
            timeout=30_000,
        )
        page.evaluate("window.swarmwatchMap.showFrame(2)")
        bubbles = page.evaluate("window.swarmwatchMap.bubbles()")
        assert {b["name"]: b["value"] for b in bubbles} == {
            name: pytest.approx(m["peers"] * 100_000 / m["population"])
            for name, m in metros[2].items()
        }
        labels = page.evaluate(
            "[...document.querySelectorAll('#map g.swarmwatch-labels text')]"
            ".map((t) => t.textContent)"
        )
        assert labels and all(label.startswith("Greater ") for label in labels), labels
        assert "metro peers per 100k" in page.locator("#bubbleLegend").inner_text()

        # Hover Reykjavik's bubble (alone in its corner of the world): its metro area's
        # rate, the 95 % interval the API published, its count and residents.
        page.select_option("#region", "europe")
        page.wait_for_function(
            "document.getElementById('map')._fullLayout.geo.projection.scale > 4", timeout=30_000
        )
        page.evaluate("window.swarmwatchMap.showFrame(2)")
        box = page.evaluate(
            """() => {
              const i = window.swarmwatchMap.bubbles().findIndex(
                (b) => b.name === 'Greater Reykjavik');
              const pts = document.querySelectorAll('#map .scattergeo path.point');
              const r = pts[i].getBoundingClientRect();
              return [r.left + r.width / 2, r.top + r.height / 2];
            }"""
        )
        page.mouse.move(box[0], box[1])
        page.locator("#tooltip").wait_for(state="visible", timeout=10_000)
        tip = page.locator("#tooltip").inner_text()
        reykjavik = metros[2]["Greater Reykjavik"]
        assert tip.startswith("Greater Reykjavik, IS (metro area)"), tip
        low, high = re.search(r"95 % ([\d.,]+)–([\d.,]+)", tip).groups()  # type: ignore[union-attr]
        assert float(low.replace(",", "")) == pytest.approx(reykjavik["ci_low"], rel=0.05)
        assert float(high.replace(",", "")) == pytest.approx(reykjavik["ci_high"], rel=0.05)
        assert f"{reykjavik['peers']} peers, 118,918 residents" in tip
        screenshot(browser, "web_map_per_capita_metros.png")
    assert browser.console_errors == []
