"""Benchmark: the web map in headless Chromium at 120 hourly frames x 5,000 H3 cells.

Prints the median and p95 time to switch frames (goal: median <= 100 ms), with a
baseline measured in the same run: the naive Plotly.restyle() of z per frame. Also
prints what the page transfers (plotly.js, basemap, frames, outlines) and how long
the API takes to answer the frames request, cold and cached.

The dataset's frame counts (a diurnal wave around the globe) go through the store's
rollup upkeep (add_increments); the page, the API and the browser are the real ones.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import h3

from bench.server import serve, stop
from swarmwatch.registry import create_study
from swarmwatch.store import Database
from swarmwatch.store.rollups import FRAME_STORED_RES, RollupIncrements, add_increments
from swarmwatch.timelapse import CHROMIUM_PATH, READY, chromium_page

START_BUCKET = 1_500_000_000 // 3600  # 2017-07-14T02:00Z, hourly buckets
#: A peer's record key on average (keys are uniform in [0, 4096)): the record-key sums.
RK_MEAN = 2048


def build_dataset(db: Database, frames: int, cells: int, res: int = 4, seed: int = 1) -> int:
    """A study whose hourly frames each publish `cells` H3 cells (all >= k peers)."""
    rng = random.Random(seed)
    chosen: set[str] = set()
    # Clustered like people: cells around a few hundred "cities" on land-ish latitudes.
    centres = [(rng.uniform(-45, 62), rng.uniform(-170, 178)) for _ in range(400)]
    while len(chosen) < cells:
        lat, lon = rng.choice(centres)
        lat = max(-85.0, min(85.0, lat + rng.gauss(0, 2.5)))
        chosen.add(h3.latlng_to_cell(lat, lon + rng.gauss(0, 3.5), res))
    ids = sorted(chosen)
    lons = [h3.cell_to_latlng(c)[1] for c in ids]
    # Frames are stored at FRAME_STORED_RES and summed up to the resolution asked for:
    # one child per chosen cell keeps each cell's count as drawn.
    stored = [h3.str_to_int(h3.cell_to_center_child(c, FRAME_STORED_RES)) for c in ids]
    weights = [rng.paretovariate(1.2) for _ in ids]
    with db.session() as session:
        study = create_study(session, "browser benchmark", titles=["E1"])
        session.flush()
        study_id, title_id = study.id, study.titles[0].id
    # Through the store's own rollup upkeep (one transaction per frame, as hours pass), so
    # the frames are stored as ingest stores them (open ones as rows, closed ones packed).
    for f in range(frames):
        bucket = START_BUCKET + f
        utc_hour = (bucket % 24) + 0.5
        frame: dict[tuple[Any, ...], tuple[int, int]] = {}
        total = 0
        for cell, lon, w in zip(stored, lons, weights, strict=True):
            local = (utc_hour + lon / 15) % 24
            evening = 0.15 + max(0.0, math.sin(math.pi * (local - 6) / 18))  # peak ~15-21h
            # k + 3: the public's cell-key noise (at most 3) never withholds a cell.
            peers = 8 + int(min(5000.0, 3 * w * evening * (0.8 + 0.4 * rng.random())))
            frame[(title_id, 3600, FRAME_STORED_RES, bucket, cell)] = (peers, peers * RK_MEAN)
            total += peers
        active = {(title_id, 3600, bucket): (total, 0, total * RK_MEAN, 0)}
        with db.engine.begin() as conn:
            add_increments(conn, RollupIncrements(frame=frame, active=active))
    return study_id


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# Time from asking for frame i to the first task after the browser painted it.
_SWITCH_JS = """async ([count, start]) => {
  const m = window.swarmwatchMap, out = [];
  for (let k = 0; k < count; k++) {
    const i = (start + k) % m.frameCount;
    const t0 = performance.now();
    await m.showFrame(i);
    out.push(performance.now() - t0);
  }
  return out;
}"""

# The baseline: what a plain plotly page does per frame (restyle z, plotly recolours).
_RESTYLE_JS = """async ([count]) => {
  const m = window.swarmwatchMap, gd = document.getElementById('map'), out = [];
  for (let k = 1; k <= count; k++) {
    await m.showFrame(k);
    const z = m.values().map(v => (v == null ? null : Math.log10(v)));
    const t0 = performance.now();
    await Plotly.restyle(gd, {z: [z]}, [0]);
    await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    out.push(performance.now() - t0);
  }
  return out;
}"""

_TRANSFER_JS = """() => {
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')];
  return entries.map(e => [e.name, e.transferSize, e.decodedBodySize]);
}"""


def missing() -> str | None:
    """Playwright (a test extra) and Debian's Chromium: never a browser download."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "Playwright: pip install -e '.[test]' (it drives Debian's chromium)"
    if not Path(CHROMIUM_PATH).exists():
        return f"{CHROMIUM_PATH}: apt-get install chromium"
    return None


def run_benchmark(
    frames: int = 120,
    cells: int = 5000,
    switches: int = 60,
    baseline: int = 4,
    screenshot: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """Measure the map at `frames` x `cells`; print and return the figures.

    `screenshot`: also save the page (after the switches) to this PNG path.
    """
    print(f"browser benchmark: building {frames} frames x {cells} cells ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        db = Database(url)
        db.upgrade()
        t0 = time.perf_counter()
        study_id = build_dataset(db, frames, cells)
        build_s = time.perf_counter() - t0
        db.dispose()
        # The real server in a child process (bench.server), as in the load benchmark.
        proc, base = serve(url)
        try:
            import httpx

            url = f"{base}/api/v1/studies/{study_id}/frames?interval=3600&res=4"
            t0 = time.perf_counter()
            body = httpx.get(url, timeout=600).content
            frames_cold_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            httpx.get(url, timeout=600)
            frames_warm_s = time.perf_counter() - t0

            with chromium_page(1400, 850) as page:
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                t0 = time.perf_counter()
                page.goto(f"{base}/?study={study_id}")
                page.wait_for_function(READY, timeout=600_000)
                load_s = time.perf_counter() - t0
                shown = page.evaluate(
                    "[window.swarmwatchMap.frameCount, window.swarmwatchMap.cellCount]"
                )
                page.evaluate(_SWITCH_JS, [3, 1])  # warm-up
                switch_ms = page.evaluate(_SWITCH_JS, [switches, 4])
                if screenshot:
                    page.screenshot(path=screenshot)
                restyle_ms = page.evaluate(_RESTYLE_JS, [baseline])
                transfer = page.evaluate(_TRANSFER_JS)
            # The same switches without the minimum hexagon size (outlines): its cost.
            with chromium_page(1400, 850) as page:
                page.add_init_script("window.SWARMWATCH_MIN_HEX_PX = 0")
                page.goto(f"{base}/?study={study_id}")
                page.wait_for_function(READY, timeout=600_000)
                page.evaluate(_SWITCH_JS, [3, 1])
                bare_ms = page.evaluate(_SWITCH_JS, [switches, 4])
        finally:
            stop(proc)
    sizes = {name.split("?")[0].rsplit("/", 1)[-1] or "index": (t, d) for name, t, d in transfer}
    figures = {
        "frames": float(shown[0]),
        "hexagons": float(shown[1]),
        "switch_median_ms": statistics.median(switch_ms),
        "switch_p95_ms": _percentile(switch_ms, 0.95),
        "restyle_baseline_median_ms": statistics.median(restyle_ms),
        "switch_without_min_size_median_ms": statistics.median(bare_ms),
        "page_transfer_bytes": float(sum(t for t, _ in sizes.values())),
        "page_decoded_bytes": float(sum(d for _, d in sizes.values())),
        "frames_json_bytes": float(len(body)),
        "frames_api_cold_s": frames_cold_s,
        "frames_api_warm_s": frames_warm_s,
        "page_load_to_first_frame_s": load_s,
        "dataset_build_s": build_s,
        "console_errors": float(len(errors)),
    }
    print(f"web map, {shown[0]} frames x {shown[1]} hexagons (headless Chromium, software raster)")
    print(
        f"  frame switch: median {figures['switch_median_ms']:.1f} ms, "
        f"p95 {figures['switch_p95_ms']:.1f} ms over {len(switch_ms)} switches "
        "(goal: median <= 100)"
    )
    print(
        f"  baseline Plotly.restyle(z): median {figures['restyle_baseline_median_ms']:.0f} ms "
        f"over {len(restyle_ms)} frames"
    )
    print(
        "  without the 3 px minimum hexagon size: median "
        f"{figures['switch_without_min_size_median_ms']:.1f} ms"
    )
    print(
        f"  page transfer: {figures['page_transfer_bytes'] / 1e6:.2f} MB "
        f"({figures['page_decoded_bytes'] / 1e6:.2f} MB decoded)"
    )
    for name, (t, d) in sorted(sizes.items(), key=lambda kv: -kv[1][0]):
        print(f"    {name:<24} {t / 1e6:7.2f} MB on the wire, {d / 1e6:7.2f} MB decoded")
    print(
        f"  frames API: {figures['frames_json_bytes'] / 1e6:.1f} MB JSON, "
        f"cold {frames_cold_s:.2f} s, cached {frames_warm_s:.2f} s; "
        f"page load to first frame {load_s:.1f} s; console errors {len(errors)}"
    )
    return figures


if __name__ == "__main__":
    run_benchmark()
