/*
 * swarmwatch time-lapse map.
 *
 * Data flow: the public API gives frames in its compact form (format=compact: every
 * cell and city named once, each frame as parallel arrays of indices and counts; see
 * swarmwatch/analysis/frames.py), decoded by decodeFrames() below; this page asks the server once for the outlines of every cell that appears in
 * any frame (POST /api/v1/geometry/h3), draws them as one plotly choropleth and
 * then only swaps the colour values per frame. Geometry is never copied per
 * frame: at 120 frames x 5,000 hexagons that is the difference between ~1 MB
 * and ~100 MB in the browser.
 *
 * Everything is served by the swarmwatch API (plotly.js and the Natural Earth
 * basemap too): no request leaves the server's origin.
 */
"use strict";

(function () {
  const API = "/api/v1";
  // Per-capita values are per this many inhabitants (GeoNames cities in the cell).
  const PER_CAPITA_UNIT = 100000;
  // Cells with fewer inhabitants than this are hidden in the per-capita
  // view: a village with five peers would otherwise top the map. The same floor as the
  // API's per-capita rankings (DEFAULT_MIN_POPULATION in swarmwatch.analysis.rankings).
  const MIN_POPULATION = 100000;
  // How often a live page asks whether the time-lapse and the ranking changed. The
  // answers carry ETags and the server keeps one answer per second for every viewer
  // (api/answercache.py), so an unchanged poll is a 304 with no body, whatever the crowd.
  const POLL_MS = window.SWARMWATCH_POLL_MS || 10000;
  // A demo's study says so in its description (swarmwatch.demo.SIMULATED_TAG).
  const SIMULATED_TAG = "[simulated]";
  // Labels for this many of the frame's largest city bubbles.
  const LABELLED_CITIES = 8;
  // Hexagons are drawn at least this wide (px) whatever the zoom: a res-4 hexagon is
  // ~1.5 px at world zoom, and an outline in its own colour makes it a visible dot.
  const MIN_HEX_PX = window.SWARMWATCH_MIN_HEX_PX ?? 3;  // the benchmark turns it off
  // Regions to zoom to: projection centre and scale (1 = the whole world).
  const REGIONS = {
    world: { lon: 0, lat: 0, scale: 1 },
    europe: { lon: 12, lat: 52, scale: 4.5 },
    north_america: { lon: -97, lat: 42, scale: 2.8 },
    south_america: { lon: -60, lat: -22, scale: 2.6 },
    africa: { lon: 18, lat: 3, scale: 2.4 },
    asia: { lon: 95, lat: 30, scale: 2.2 },
    oceania: { lon: 145, lat: -28, scale: 3.5 },
  };

  // An exported time-lapse (swarmwatch.timelapse.export_html) carries its data inline
  // and has no server: then the study, frames and outlines come from here.
  const EMBED = window.SWARMWATCH_TIMELAPSE || null;

  const $ = (id) => document.getElementById(id);
  const el = {
    study: $("study"), title: $("title"), interval: $("interval"), res: $("res"),
    bubbles: $("bubbles"), play: $("play"), slider: $("slider"), speed: $("speed"),
    frameUtc: $("frameUtc"), frameLocal: $("frameLocal"), frameCount: $("frameCount"),
    message: $("message"), main: $("main"), map: $("map"), window: $("window"),
    csv: $("csv"), ranking: $("ranking").tBodies[0], rankNote: $("rankNote"),
    rankValueHead: $("rankValueHead"), tooltip: $("tooltip"),
    level: $("level"), rankPlaceHead: $("rankPlaceHead"), rankCiHead: $("rankCiHead"),
    video: $("video"), region: $("region"), live: $("live"), clock: $("clock"),
    studyName: $("studyName"), studyWindow: $("studyWindow"), simBadge: $("simBadge"),
    simNotice: $("simNotice"), bubbleLegend: $("bubbleLegend"),
  };

  // The loaded time-lapse: ids and outlines once, one value array per frame.
  const state = {
    studies: [],
    study: null,
    frames: [],       // [{t: Date, cells: Map, cities: [...]}] as the API gave them
    ids: [],          // every cell id of the time-lapse, in drawing order
    population: [],   // inhabitants per cell (same order as ids)
    z: [],            // per frame: colour values (log10), null where no published count
    raw: [],          // per frame: the value behind each colour, for hover text
    scale: null,      // fixed colour range across all frames
    index: 0,
    timer: null,
    loadSeq: 0,       // guards against a slow old load finishing after a newer one
    drawn: false,     // the current view is on screen (tests and benchmarks wait for it)
    framesTag: null,  // ETag of the frames answer on screen (live updates compare it)
    updates: 0,       // live updates applied without a reload
  };

  const metric = () => document.querySelector("input[name=metric]:checked").value;

  // ---- messages ---------------------------------------------------------------------------

  function showMessage(text, isError) {
    el.message.textContent = text;
    el.message.className = isError ? "error" : "";
    el.message.hidden = false;
  }

  function clearMessage() {
    el.message.hidden = true;
    el.message.textContent = "";
  }

  async function getJSON(url, options) {
    const response = await fetch(url, options);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---- URL state (so a view can be shared) -------------------------------------------------

  function readURL() {
    const q = new URLSearchParams(location.search);
    return {
      study: q.get("study"), title: q.get("title"), res: q.get("res"),
      interval: q.get("interval"), metric: q.get("metric"), frame: q.get("frame"),
    };
  }

  function writeURL() {
    if (EMBED) return;  // a file: nothing to share through the URL
    const q = new URLSearchParams();
    if (state.study) q.set("study", state.study.id);
    if (el.title.value) q.set("title", el.title.value);
    q.set("interval", el.interval.value);
    q.set("res", el.res.value);
    q.set("metric", metric());
    q.set("frame", state.index);
    history.replaceState(null, "", "?" + q.toString());
  }

  // ---- studies ------------------------------------------------------------------------------

  async function loadStudies() {
    const wanted = readURL();
    if (wanted.res) el.res.value = wanted.res;
    if (wanted.interval) el.interval.value = wanted.interval;
    if (wanted.metric === "per_capita" || (EMBED && EMBED.metric === "per_capita")) {
      document.querySelector("input[name=metric][value=per_capita]").checked = true;
    }
    if (EMBED) {
      for (const id of ["title", "interval", "res", "rankPanel", "live"]) $(id).closest("label, aside").hidden = true;
      if (EMBED.video) document.body.classList.add("video");
      el.res.value = String(EMBED.res);
      el.interval.value = String(EMBED.interval);
    }
    const page = EMBED ? { items: [EMBED.study] } : await getJSON(`${API}/studies?limit=500`);
    state.studies = page.items;
    el.study.replaceChildren(...page.items.map((s) => new Option(`${s.name} (#${s.id})`, s.id)));
    if (wanted.study && !page.items.some((s) => String(s.id) === wanted.study)) {
      // Unknown, or private (this page sends no API key). Asking for it would only log
      // a 404 or 401 in the console, so say it here.
      showEmpty(`Study ${wanted.study} is not among the public studies: it does not exist, ` +
        "or it is private. Pick one from the list above.", true);
      el.main.hidden = true;
      return;
    }
    if (!state.studies.length) {
      showEmpty("There are no public studies yet. Create one with `swarmwatch study create` " +
        "or POST /api/v1/studies, register its torrents, and come back once it has been crawled.");
      return;
    }
    el.study.value = wanted.study || String(state.studies[0].id);
    selectStudy(wanted.title, wanted.frame);
  }

  function selectStudy(titleId, frame) {
    state.study = state.studies.find((s) => String(s.id) === el.study.value);
    const simulated = (state.study.description || "").startsWith(SIMULATED_TAG);
    el.simNotice.hidden = !simulated;
    el.simBadge.hidden = !simulated;
    el.studyName.textContent = (EMBED && EMBED.video && EMBED.video.heading) || state.study.name;
    el.level.value = metric() === "per_capita" ? "metro" : "city";
    const titles = state.study.titles || [];
    el.title.replaceChildren(new Option("all titles", ""),
      ...titles.map((t) => new Option(t.name, t.id)));
    if (titleId && titles.some((t) => String(t.id) === String(titleId))) el.title.value = titleId;
    return loadFrames(frame);
  }

  function showEmpty(text, isError) {
    stop();
    state.frames = [];
    el.main.hidden = true;
    showMessage(text, isError);
  }

  // ---- frames and geometry ------------------------------------------------------------------

  async function loadFrames(startFrame) {
    const seq = ++state.loadSeq;
    state.drawn = false;
    stop();
    const study = state.study;
    const q = new URLSearchParams({
      interval: el.interval.value, res: el.res.value, format: "compact",
    });
    if (el.title.value) q.set("title", el.title.value);
    showMessage(`Loading ${study.name}…`);
    let body;
    let tag = null;
    try {
      if (EMBED) {
        body = EMBED;
      } else {
        const answer = await fetchFrames(study, q, null);
        body = answer.body;
        tag = answer.tag;
      }
    } catch (error) {
      if (seq === state.loadSeq) showEmpty(`Could not load the time-lapse: ${error.message}.`, true);
      return;
    }
    if (seq !== state.loadSeq) return;
    state.framesTag = tag;
    const frames = decodeFrames(body);
    if (!frames.length || frames.every((f) => f.cells.size === 0 && f.cities.length === 0)) {
      showEmpty(`“${study.name}” has no published frames yet: nothing has been crawled, or every ` +
        `place is still below the study's k threshold of ${study.k_threshold} peers.`);
      return;
    }
    const ids = body.format === "compact" ? body.cells.slice()
      : [...new Set(frames.flatMap((f) => [...f.cells.keys()]))];
    let outlines = EMBED ? EMBED.outlines : { features: [] };
    if (ids.length && !EMBED) {
      try {
        outlines = await fetchOutlines(ids, frames);
      } catch (error) {
        if (seq === state.loadSeq) showEmpty(`Could not load hexagon outlines: ${error.message}.`, true);
        return;
      }
    }
    if (seq !== state.loadSeq) return;
    clearMessage();
    el.main.hidden = false;
    setFrames(frames, ids, outlines);
    state.index = Math.min(Math.max(Number(startFrame) || 0, 0), frames.length - 1);
    computeValues();
    await draw();
    if (seq !== state.loadSeq) return;
    await showFrame(state.index);
    state.drawn = true;
    loadRanking();
    schedulePoll();
  }

  /* The compact frames with their ETag. Given the ETag on screen, the page asks with
   * If-None-Match itself (the browser's cache may be off): an unchanged time-lapse costs
   * the server a 304 without a body, and this returns null. */
  async function fetchFrames(study, q, tag) {
    const options = tag ? { cache: "no-store", headers: { "If-None-Match": tag } } : {};
    const response = await fetch(`${API}/studies/${study.id}/frames?${q}`, options);
    if (response.status === 304) return null;
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      error.status = response.status;
      throw error;
    }
    return { tag: response.headers.get("ETag"), body: await response.json() };
  }

  function fetchOutlines(ids, frames) {
    const cityIds = [...new Set(frames.flatMap((f) => f.cities.map((c) => c.geoname_id)))]
      .filter((id) => Number.isInteger(id));
    return getJSON(`${API}/geometry/h3`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ cells: ids, cities: cityIds }),
    });
  }

  function setFrames(frames, ids, outlines) {
    state.frames = frames;
    state.ids = ids;
    state.outlines = outlines;
    const pop = new Map(outlines.features.map((f) => [f.id, f.properties.population || 0]));
    state.population = ids.map((id) => pop.get(id) || 0);
    const cityPop = outlines.city_population || {};
    for (const frame of frames) {
      for (const c of frame.cities) c.population = c.population ?? cityPop[c.geoname_id] ?? 0;
    }
    el.slider.max = String(frames.length - 1);
    const first = frames[0].t;
    const last = new Date(frames[frames.length - 1].t.getTime() + Number(el.interval.value) * 1000);
    el.studyWindow.textContent = `${windowFormat.format(first)} – ${windowFormat.format(last)} UTC · ` +
      `${frames.length} ${el.interval.value === "86400" ? "daily" : "hourly"} frames`;
  }

  // ---- live updates -------------------------------------------------------------------------
  //
  // While the page is visible it asks every POLL_MS whether the frames changed (ETag) and,
  // if they did, shows the new frames without a reload: recoloured in place when the cells
  // are the same, redrawn when new cells appeared. A viewer on the newest frame follows the
  // new newest frame; one looking back in time stays there. The ranking is asked again too.

  let pollTimer = null;
  function schedulePoll() {
    if (pollTimer) clearTimeout(pollTimer);
    pollTimer = null;
    if (EMBED || !el.live.checked) return;
    pollTimer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    pollTimer = null;
    const seq = state.loadSeq;
    try {
      if (document.visibilityState !== "hidden" && state.frames.length) await refresh(seq);
    } catch (error) {
      console.warn("live update failed:", error.message);  // the next poll tries again
    }
    if (seq === state.loadSeq) schedulePoll();
  }

  async function refresh(seq) {
    const q = new URLSearchParams({ interval: el.interval.value, res: el.res.value, format: "compact" });
    if (el.title.value) q.set("title", el.title.value);
    const answer = await fetchFrames(state.study, q, state.framesTag);
    if (seq !== state.loadSeq) return;
    if (answer !== null && (answer.tag === null || answer.tag !== state.framesTag)) {
      const frames = decodeFrames(answer.body);
      if (frames.length) {
        const ids = answer.body.cells.slice();
        const known = new Set(state.ids);
        const sameCells = ids.length === state.ids.length && ids.every((id) => known.has(id));
        const outlines = sameCells ? state.outlines : await fetchOutlines(ids, frames);
        if (seq !== state.loadSeq) return;
        const following = state.index >= state.frames.length - 1;
        const oldScale = state.scale;
        setFrames(frames, ids, outlines);
        state.framesTag = answer.tag;
        if (following || state.index >= frames.length) state.index = frames.length - 1;
        computeValues();
        const sameScale = oldScale && oldScale.lo === state.scale.lo && oldScale.hi === state.scale.hi;
        if (!sameCells || !sameScale || !sameCities()) {
          await draw();  // new outlines or a new colour range: plotly draws the view again
        } else {
          state.paths = null;
        }
        if (seq !== state.loadSeq) return;
        await showFrame(state.index);
        state.updates += 1;
      }
    }
    rankingKey = "";
    await loadRanking(true);
  }

  /* The bubble layer drawn has the same cities as the frames now need. */
  function sameCities() {
    const before = (state.cities || []).map((c) => c.key).join("|");
    const cityValues = state.cityValues;
    const cities = state.cities;
    const cityIndex = state.cityIndex;
    collectCities();
    const same = before === state.cities.map((c) => c.key).join("|");
    if (!same) {
      state.cities = cities;
      state.cityValues = cityValues;
      state.cityIndex = cityIndex;
    }
    return same;
  }

  /* Frames as [{t: Date, cells: Map(h3 -> peers), cities: [{geoname_id, name, country,
   * lat, lon, peers}], metros: [{id, name, country, lat, lon, population, peers,
   * per_100k, ci_low, ci_high}]}] from either form of the API's answer. The compact form
   * names each cell once in body.cells, each city in body.cities and each metro in
   * body.metros; a frame lists its cells as gaps between ascending indices (cell_gaps)
   * with cell_peers beside them, its top cities as indices (city) with city_peers, and
   * its top metros per capita as indices (metro) with metro_peers and the rate's 95 %
   * interval (metro_ci_low, metro_ci_high) beside them. */
  function decodeFrames(body) {
    if (body.format !== "compact") {
      return (body.frames || []).map((f) => ({
        t: new Date(typeof f.t === "number" ? f.t * 1000 : f.t),
        cells: new Map(f.cells.map((c) => [c.h3, c.peers])),
        cities: f.top_cities || [],
        metros: f.top_metros || [],
      }));
    }
    const names = body.cells || [];
    const table = body.cities || [];
    const metroTable = body.metros || [];
    return (body.frames || []).map((f) => {
      const cells = new Map();
      let at = 0;
      f.cell_gaps.forEach((gap, j) => {
        at += gap;
        cells.set(names[at], f.cell_peers[j]);
      });
      return {
        t: new Date(f.t),
        cells,
        cities: f.city.map((i, j) => ({ ...table[i], peers: f.city_peers[j] })),
        metros: (f.metro || []).map((i, j) => ({
          ...metroTable[i],
          peers: f.metro_peers[j],
          per_100k: (f.metro_peers[j] * PER_CAPITA_UNIT) / metroTable[i].population,
          ci_low: f.metro_ci_low[j],
          ci_high: f.metro_ci_high[j],
        })),
      };
    });
  }

  /* Colour values for every frame, and one scale for all of them (an honest animation:
   * the same colour means the same number in every frame). Log scale, because peers
   * per cell span four orders of magnitude between a capital and a small town. */
  function computeValues() {
    const perCapita = metric() === "per_capita";
    let max = 0;
    let min = Infinity;
    state.raw = state.frames.map((frame) => state.ids.map((id, i) => {
      const peers = frame.cells.get(id);
      if (peers == null) return null;
      if (!perCapita) return peers;
      const pop = state.population[i];
      return pop >= MIN_POPULATION ? (peers * PER_CAPITA_UNIT) / pop : null;
    }));
    for (const values of state.raw) {
      for (const v of values) {
        if (v != null && v > 0) {
          if (v > max) max = v;
          if (v < min) min = v;
        }
      }
    }
    if (!(max > 0)) { min = 1; max = 10; }
    if (min === max) min = max / 10;
    state.scale = { min, max, lo: Math.log10(min), hi: Math.log10(max) };
    state.z = state.raw.map((values) => values.map((v) => (v != null && v > 0 ? Math.log10(v) : null)));
  }

  function colorbarTicks() {
    const { lo, hi } = state.scale;
    const vals = [];
    const text = [];
    for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        const lv = Math.log10(v);
        if (lv >= lo - 1e-9 && lv <= hi + 1e-9) {
          vals.push(lv);
          text.push(formatNumber(v));
        }
      }
    }
    return { vals, text };
  }

  function formatNumber(v) {
    if (v >= 1000) return Math.round(v).toLocaleString("en");
    if (v >= 10) return String(Math.round(v));
    return String(Number(v.toPrecision(2)));
  }

  function valueLabel() {
    return metric() === "per_capita"
      ? `active peers per ${PER_CAPITA_UNIT.toLocaleString("en")} inhabitants`
      : "active peers";
  }

  // ---- drawing ----------------------------------------------------------------------------
  //
  // plotly draws the map once per view (study, title, resolution, frame length, metric):
  // every cell of the time-lapse and every city that is ever in a frame's top list.
  // Switching frames then only recolours the hexagon paths and resizes the bubbles in
  // the SVG plotly made. A Plotly.restyle() of z would recompute every outline (over a
  // second at 5,000 hexagons); this takes a few milliseconds. Colours come from the
  // same colour scale and range plotly's colour bar shows, so the legend stays true.

  // plotly's YlOrRd from its third stop up, low to high (given explicitly so both sides
  // use the same stops): its palest yellows vanish on the light-grey land.
  const COLORSCALE = [
    [0, "rgb(254,217,118)"], [0.167, "rgb(254,178,76)"], [0.333, "rgb(253,141,60)"],
    [0.5, "rgb(252,78,42)"], [0.667, "rgb(227,26,28)"], [0.833, "rgb(189,0,38)"],
    [1, "rgb(128,0,38)"],
  ];
  const STOPS = COLORSCALE.map(([at, rgb]) => [at, rgb.match(/\d+/g).map(Number)]);

  // Colours are quantised to this many steps between zmin and zmax (the colour bar's
  // range): too fine to see on the map, and each step is one SVG path (see findPaths).
  const COLOR_STEPS = 64;
  const PALETTE = Array.from({ length: COLOR_STEPS + 1 }, (_, k) => interpolate(k / COLOR_STEPS));
  const SVG_NS = "http://www.w3.org/2000/svg";

  /* The colour plotly gives x in [0, 1] of the range (linear RGB between stops). */
  function interpolate(x) {
    let k = 1;
    while (k < STOPS.length - 1 && STOPS[k][0] < x) k++;
    const [a, ca] = STOPS[k - 1];
    const [b, cb] = STOPS[k];
    const f = (x - a) / (b - a);
    return `rgb(${ca.map((c, j) => Math.round(c + f * (cb[j] - c))).join(",")})`;
  }

  /* The places of the bubble layer: every city in some frame's top list or, per capita,
   * every metro area in some frame's top list by rate (the API lists metros of at least
   * its minimum population: a city proper is the wrong denominator), drawn once. */
  function bubblePlaces(frame) {
    return metric() === "per_capita" ? frame.metros || [] : frame.cities;
  }

  function placeKey(c) {
    if (metric() === "per_capita") return `metro:${c.id}`;
    return c.geoname_id ?? `${c.name}|${c.lat}|${c.lon}`;
  }

  function collectCities() {
    const perCapita = metric() === "per_capita";
    const byKey = new Map();
    for (const frame of state.frames) {
      for (const c of bubblePlaces(frame)) {
        if (c.lat == null || c.lon == null) continue;
        const key = placeKey(c);
        if (!byKey.has(key)) {
          byKey.set(key, { key, name: c.name, country: c.country, lat: c.lat, lon: c.lon,
            population: c.population });
        }
      }
    }
    state.cities = [...byKey.values()];
    state.cityIndex = new Map(state.cities.map((c, i) => [c.key, i]));
    // Per frame: bubble value per place (null: not in that frame's list), and per capita
    // the published count and the rate's 95 % interval for the tooltip.
    state.cityDetails = state.frames.map(() => new Array(state.cities.length).fill(null));
    state.cityValues = state.frames.map((frame, k) => {
      const values = new Array(state.cities.length).fill(null);
      for (const c of bubblePlaces(frame)) {
        const i = state.cityIndex.get(placeKey(c));
        if (i === undefined) continue;
        values[i] = perCapita ? c.per_100k : c.peers;
        if (perCapita) state.cityDetails[k][i] = { peers: c.peers, low: c.ci_low, high: c.ci_high };
      }
      return values;
    });
    let max = 0;
    for (const values of state.cityValues) for (const v of values) if (v > max) max = v;
    // A fixed size reference across frames, like the colour scale: largest bubble 40 px.
    state.sizeref = Math.sqrt(max || 1) / 40;
  }

  function draw() {
    collectCities();
    const ticks = colorbarTicks();
    const hexes = {
      type: "choropleth",
      geojson: state.outlines,      // sent to plotly once; frames only change colours
      featureidkey: "id",
      locations: state.ids,
      // Every cell gets a value so plotly draws every outline; showFrame() colours them.
      z: state.ids.map(() => state.scale.lo),
      zmin: state.scale.lo,
      zmax: state.scale.hi,
      zauto: false,
      colorscale: COLORSCALE,
      // No outlines: at world scale they only darken small hexagons, and cost paint time.
      marker: { line: { width: 0 } },
      colorbar: { title: { text: valueLabel(), side: "right" }, tickvals: ticks.vals,
        ticktext: ticks.text, thickness: 12, len: 0.6, x: 0.995, xanchor: "right",
        y: 0.5, bgcolor: "rgba(255,255,255,0.75)" },
      hoverinfo: "none",            // the tooltip is ours: it knows the current frame
      name: "cells",
    };
    const bubbles = {
      type: "scattergeo",
      mode: "markers",
      lon: state.cities.map((c) => c.lon),
      lat: state.cities.map((c) => c.lat),
      hoverinfo: "none",
      visible: el.bubbles.checked,
      marker: {
        size: state.cities.map(() => 1),
        sizemode: "diameter",
        sizeref: state.sizeref,
        color: "rgba(30,80,160,0.35)",
        line: { color: "rgba(30,80,160,0.9)", width: 1 },
      },
      name: "top cities",
      showlegend: false,
    };
    const region = REGIONS[el.region.value] || REGIONS.world;
    const layout = {
      margin: { l: 0, r: 0, t: 0, b: 0 },
      paper_bgcolor: "#dfe9f3",
      geo: {
        // The whole world, pole to pole, whatever the data: a time-lapse is about where
        // in the world. The map's box has the projection's shape (style.css), so the
        // world fills it; scroll or the Region list zooms, dragging pans.
        projection: { type: "natural earth", rotation: { lon: region.lon }, scale: region.scale },
        center: { lon: region.lon, lat: region.lat },
        lonaxis: { range: [-180, 180] },
        lataxis: { range: [-90, 90] },
        domain: { x: [0, 1], y: [0, 1] },
        fitbounds: false,
        bgcolor: "#dfe9f3",
        showland: true, landcolor: "#eef0f2",
        showocean: true, oceancolor: "#dfe9f3",
        showcountries: true, countrycolor: "#b8bec8",
        showcoastlines: true, coastlinecolor: "#9aa2ad",
        showframe: false,
        resolution: 110,
      },
      hovermode: "closest",
      uirevision: `region:${el.region.value}`,  // keep the user's zoom across redraws
    };
    const config = {
      // plotly's geo basemap comes from this server, never from plotly's CDN.
      topojsonURL: "/web/topojson/",
      displaylogo: false,
      responsive: true,
      scrollZoom: true,
      staticPlot: Boolean(EMBED && EMBED.video),
      modeBarButtonsToRemove: ["toImage", "select2d", "lasso2d"],
    };
    state.paths = null;
    return Plotly.react(el.map, [hexes, bubbles], layout, config).then(() => {
      bindPlotlyEvents();
      paint();
      drawBubbleLegend();
    });
  }

  /* Read the outlines plotly drew (projected SVG path strings, one per cell; d3 keeps
   * each path's point in __data__) and put our own colour layer beside them: one path
   * per colour step, holding every hexagon of that colour. A frame then rewrites at
   * most COLOR_STEPS + 1 elements instead of one per hexagon, which is what keeps a
   * frame switch at 5,000 hexagons in tens of milliseconds in a software-rendered
   * browser. plotly's own cell paths stay in place, hidden, for projection and zoom;
   * whenever plotly redraws or moves them (plotly_afterplot, pan, zoom) this runs again. */
  function findPaths() {
    const index = new Map(state.ids.map((id, i) => [id, i]));
    const ds = new Array(state.ids.length).fill(null);
    let parent = null;
    for (const path of el.map.querySelectorAll("path.choroplethlocation")) {
      const i = path.__data__ ? index.get(path.__data__.loc) : undefined;
      if (i === undefined) continue;
      ds[i] = path.getAttribute("d");
      path.style.visibility = "hidden";
      parent = path.parentNode;
    }
    let layer = null;
    if (parent) {
      // Beside plotly's choropleth layer, not inside it: plotly re-projects every path
      // in that layer on redraws and would trip over paths it did not make.
      const choropleth = parent.closest(".choroplethlayer") || parent;
      layer = choropleth.parentNode.querySelector(":scope > g.swarmwatch-colors");
      if (!layer) {
        layer = document.createElementNS(SVG_NS, "g");
        layer.setAttribute("class", "swarmwatch-colors");
        layer.style.pointerEvents = "none";
        PALETTE.forEach((color) => {
          const path = document.createElementNS(SVG_NS, "path");
          path.setAttribute("fill", color);
          path.setAttribute("shape-rendering", "optimizeSpeed");
          layer.append(path);
        });
        choropleth.after(layer);
      }
      // A res-4 hexagon (~40 km) is a pixel or two on a world map. Below MIN_HEX_PX
      // each one is drawn as a MIN_HEX_PX square on its centre instead: always
      // visible, and a filled square is the cheapest shape to paint (an outline in
      // the hexagon's colour did the same at four times the frame-switch time).
      // Zoomed in, hexagons are big enough and are drawn as they are.
      const hexPx = hexagonPixels(ds);
      if (MIN_HEX_PX > 0 && hexPx < MIN_HEX_PX) {
        const h = MIN_HEX_PX / 2;
        for (let i = 0; i < ds.length; i++) {
          const c = ds[i] && centre(ds[i]);
          ds[i] = c ? `M${(c[0] - h).toFixed(1)},${(c[1] - h).toFixed(1)}h${MIN_HEX_PX}v${MIN_HEX_PX}h-${MIN_HEX_PX}Z` : null;
        }
      }
      layer.dataset.minimumSize = hexPx < MIN_HEX_PX && MIN_HEX_PX > 0 ? "squares" : "";
    }
    const cities = [...el.map.querySelectorAll(".scatterlayer path.point")];
    state.paths = {
      ds,
      buckets: layer ? [...layer.children] : [],
      shown: new Array(PALETTE.length).fill(""),
      cities: cities.length === state.cities.length ? cities : [],
    };
  }

  /* The mean of a path's points (the centre of a hexagon's projected outline). */
  function centre(d) {
    const n = d.match(/-?\d+(\.\d+)?(e-?\d+)?/g);
    if (!n || n.length < 2) return null;
    let x = 0;
    let y = 0;
    const points = Math.floor(n.length / 2);
    for (let j = 0; j < points; j++) {
      x += Number(n[2 * j]);
      y += Number(n[2 * j + 1]);
    }
    return [x / points, y / points];
  }

  /* The drawn width (px) of a typical hexagon: the median of a few outlines' extents. */
  function hexagonPixels(ds) {
    const widths = [];
    for (let i = 0; i < ds.length && widths.length < 25; i += Math.max(1, Math.floor(ds.length / 25))) {
      const d = ds[i];
      if (!d) continue;
      const xs = (d.match(/-?\d+(\.\d+)?/g) || []).map(Number).filter((_, j) => j % 2 === 0);
      if (xs.length >= 3) widths.push(Math.max(...xs) - Math.min(...xs));
    }
    if (!widths.length) return 0;
    widths.sort((a, b) => a - b);
    return widths[Math.floor(widths.length / 2)];
  }

  /* Colour the hexagons and size the bubbles for the current frame. */
  function paint() {
    if (!state.paths) findPaths();
    const { ds, buckets, shown } = state.paths;
    const z = state.z[state.index];
    if (buckets.length) {
      const parts = buckets.map(() => []);
      const { lo, hi } = state.scale;
      for (let i = 0; i < z.length; i++) {
        if (z[i] == null || ds[i] == null) continue;
        const x = Math.min(1, Math.max(0, (z[i] - lo) / (hi - lo || 1)));
        parts[Math.round(x * COLOR_STEPS)].push(ds[i]);
      }
      parts.forEach((part, k) => {
        const d = part.join("");
        if (d !== shown[k]) {  // untouched colours cost nothing to the browser
          buckets[k].setAttribute("d", d);
          shown[k] = d;
        }
      });
    } else if (z.length) {
      // plotly drew no paths we recognise (a future plotly.js?): let plotly colour them.
      Plotly.restyle(el.map, { z: [z.map((v) => (v == null ? null : v))] }, [0]);
    }
    const values = state.cityValues[state.index];
    state.paths.cities.forEach((path, i) => {
      const v = values[i];
      if (v == null || !(v > 0)) {
        path.style.visibility = "hidden";
        return;
      }
      // plotly's circle marker path, diameter sqrt(v) / sizeref as with sizemode diameter.
      const r = (Math.sqrt(v) / state.sizeref / 2).toFixed(2);
      path.setAttribute("d", `M${r},0A${r},${r} 0 1,1 0,-${r}A${r},${r} 0 0,1 ${r},0Z`);
      path.style.visibility = "";
    });
    labelCities(values);
  }

  /* Names beside the frame's largest bubbles, in an SVG layer over plotly's points (each
   * point is a path translated to its projected position: the label takes the same). */
  function labelCities(values) {
    const points = state.paths.cities;
    let layer = el.map.querySelector("g.swarmwatch-labels");
    if (!points.length || !el.bubbles.checked) {
      if (layer) layer.replaceChildren();
      return;
    }
    if (!layer) {
      const scatter = points[0].closest(".scatterlayer") || points[0].parentNode;
      layer = document.createElementNS(SVG_NS, "g");
      layer.setAttribute("class", "swarmwatch-labels");
      layer.style.pointerEvents = "none";
      scatter.after(layer);
    }
    // Only cities in view (zoomed in, plotly keeps the others' points off the plot).
    const plot = el.map._fullLayout ? el.map._fullLayout._size : null;
    const where = (i) => {
      const m = /translate\(([-\d.e]+)[ ,]+([-\d.e]+)\)/.exec(points[i].getAttribute("transform") || "");
      if (!m || points[i].style.visibility === "hidden") return null;
      const x = Number(m[1]);
      const y = Number(m[2]);
      if (plot && (x < 0 || y < 0 || x > plot.w || y > plot.h)) return null;
      return [x, y];
    };
    const top = values.map((v, i) => [v, i]).filter(([v, i]) => v != null && v > 0 && where(i))
      .sort((a, b) => b[0] - a[0]).slice(0, LABELLED_CITIES);
    const labels = [];
    const taken = [];  // label boxes so far: a label that would overlap one is left out
    for (const [v, i] of top) {
      const m = where(i);
      const r = Math.sqrt(v) / state.sizeref / 2;
      const box = [m[0] + r + 3, m[1] - 8, m[0] + r + 3 + 7 * state.cities[i].name.length, m[1] + 6];
      if (taken.some((b) => box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3])) continue;
      taken.push(box);
      const text = document.createElementNS(SVG_NS, "text");
      text.setAttribute("x", (m[0] + r + 3).toFixed(1));
      text.setAttribute("y", (m[1] + 4).toFixed(1));
      text.textContent = state.cities[i].name;
      labels.push(text);
    }
    layer.replaceChildren(...labels);
  }

  /* Three reference bubbles (the same sizeref as the map) with their values. */
  function drawBubbleLegend() {
    const values = state.cityValues ? state.cityValues.flat().filter((v) => v != null && v > 0) : [];
    if (!values.length || !el.bubbles.checked) {
      el.bubbleLegend.replaceChildren();
      return;
    }
    const max = Math.max(...values);
    const nice = (v) => {
      const e = 10 ** Math.floor(Math.log10(v));
      return [5, 2, 1].map((m) => m * e).find((x) => x <= v) || e;
    };
    const refs = [...new Set([nice(max), nice(max / 5), nice(max / 25)])].filter((v) => v > 0);
    const radii = refs.map((v) => Math.sqrt(v) / state.sizeref / 2);
    // Side by side, each with its value: nested circles crowd their labels together.
    const height = 2 * radii[0] + 4;
    const svg = document.createElementNS(SVG_NS, "svg");
    let x = 2;
    refs.forEach((v, k) => {
      const r = Math.max(radii[k], 1.5);
      const circle = document.createElementNS(SVG_NS, "circle");
      circle.setAttribute("cx", (x + r).toFixed(1));
      circle.setAttribute("cy", (height / 2).toFixed(1));
      circle.setAttribute("r", r.toFixed(1));
      circle.setAttribute("fill", "rgba(30,80,160,0.35)");
      circle.setAttribute("stroke", "rgba(30,80,160,0.9)");
      svg.append(circle);
      const text = document.createElementNS(SVG_NS, "text");
      text.setAttribute("x", (x + 2 * r + 4).toFixed(1));
      text.setAttribute("y", (height / 2 + 4).toFixed(1));
      text.setAttribute("font-size", "11");
      text.textContent = formatNumber(v);
      svg.append(text);
      x += 2 * r + 12 + 7 * formatNumber(v).length;
    });
    svg.setAttribute("width", String(Math.ceil(x)));
    svg.setAttribute("height", String(Math.ceil(height)));
    const caption = document.createElement("div");
    caption.textContent = metric() === "per_capita" ? "metro peers per 100k" : "city peers";
    el.bubbleLegend.replaceChildren(caption, svg);
  }

  let eventsBound = false;
  function bindPlotlyEvents() {
    if (eventsBound) return;
    eventsBound = true;
    // plotly redrew or moved its outlines: read them again and repaint this frame.
    const repaint = () => { state.paths = null; if (state.frames.length) paint(); };
    el.map.on("plotly_afterplot", repaint);
    el.map.on("plotly_relayouting", repaint);
    el.map.on("plotly_relayout", repaint);
    el.map.on("plotly_hover", (event) => showTooltip(event.points[0], event.event));
    el.map.on("plotly_unhover", () => { el.tooltip.hidden = true; });
  }

  function showTooltip(point, mouse) {
    if (!point || !mouse) return;
    const i = point.pointNumber;
    let text;
    if (point.curveNumber === 0) {
      const v = state.raw[state.index][i];
      if (v == null) return;
      const pop = state.population[i];
      text = `H3 ${state.ids[i]}\n${formatNumber(v)} ${valueLabel()}` +
        (pop ? `\n${pop.toLocaleString("en")} inhabitants (GeoNames)` : "");
    } else {
      const v = state.cityValues[state.index][i];
      if (v == null) return;
      const c = state.cities[i];
      const detail = state.cityDetails[state.index][i];
      text = `${c.name}${c.country ? ", " + c.country : ""}`;
      if (detail) {
        // Per capita: a metro area's rate with its 95 % interval, its count and residents.
        text += ` (metro area)\n${formatNumber(v)} peers per ${PER_CAPITA_UNIT.toLocaleString("en")}` +
          ` residents (95 % ${formatNumber(detail.low)}–${formatNumber(detail.high)})\n` +
          `${formatNumber(detail.peers)} peers, ${c.population.toLocaleString("en")} residents`;
      } else {
        text += `\n${formatNumber(v)} ${valueLabel()}`;
      }
    }
    el.tooltip.textContent = text;
    el.tooltip.style.left = `${mouse.clientX + 12}px`;
    el.tooltip.style.top = `${mouse.clientY + 12}px`;
    el.tooltip.hidden = false;
  }

  /* Show frame i: labels, then the new colours and bubble sizes (no plotly redraw). */
  function showFrame(i) {
    state.index = i;
    const frame = state.frames[i];
    el.slider.value = String(i);
    el.frameUtc.textContent = formatUTC(frame.t);
    el.frameLocal.textContent = `local ${formatLocal(frame.t)}`;
    el.frameCount.textContent = `frame ${i + 1} / ${state.frames.length}`;
    el.clock.textContent = formatUTC(frame.t);
    el.tooltip.hidden = true;
    paint();
    writeURL();
    if (el.window.value === "day") loadRanking();
    // Resolves once the browser has painted the frame (a task queued from the
    // animation frame runs after that frame's paint).
    return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  }

  const utcFormat = new Intl.DateTimeFormat("en-GB", {
    timeZone: "UTC", year: "numeric", month: "short", day: "2-digit", weekday: "short",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
  const localFormat = new Intl.DateTimeFormat(undefined, {
    weekday: "short", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  });
  const formatUTC = (d) => `${utcFormat.format(d)} UTC`;
  const windowFormat = new Intl.DateTimeFormat("en-GB", {
    timeZone: "UTC", year: "numeric", month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit", hourCycle: "h23",
  });
  const formatLocal = (d) => localFormat.format(d);

  // ---- player -----------------------------------------------------------------------------

  function play() {
    if (state.timer || state.frames.length < 2) return;
    setPlayButton(true);
    const tick = () => {
      const next = (state.index + 1) % state.frames.length;
      // Wait for the draw before scheduling the next one, so a slow machine drops
      // speed rather than queueing frames.
      Promise.resolve(showFrame(next)).then(() => {
        if (state.timer) state.timer = setTimeout(tick, Number(el.speed.value));
      });
    };
    state.timer = setTimeout(tick, Number(el.speed.value));
  }

  function stop() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    setPlayButton(false);
  }

  /* The icon is drawn by CSS (.icon.play / .icon.pause), not a font glyph. */
  function setPlayButton(playing) {
    el.play.querySelector(".icon").className = `icon ${playing ? "pause" : "play"}`;
    el.play.querySelector(".label").textContent = playing ? "Pause" : "Play";
    el.play.setAttribute("aria-label", playing ? "pause" : "play");
  }

  // ---- ranking ----------------------------------------------------------------------------

  function rankingQuery() {
    // Per-capita ranks default to metro areas with the API's minimum population (a
    // city proper is the wrong denominator: alpha60 ranked urban areas).
    const q = new URLSearchParams({ level: el.level.value, metric: metric(), limit: "25" });
    if (el.title.value) q.set("title", el.title.value);
    if (el.window.value === "day" && state.frames.length) {
      // Rankings are kept per first-seen day: the window is the frame's UTC day.
      const t = state.frames[state.index].t;
      const day = new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth(), t.getUTCDate()));
      q.set("from", day.toISOString());
      q.set("to", new Date(day.getTime() + 86400000).toISOString());
    }
    return q;
  }

  let rankingKey = "";
  let rankingTag = null;
  async function loadRanking(revalidate) {
    if (!state.study || EMBED) return;
    const q = rankingQuery();
    const key = `${state.study.id}?${q}`;
    if (key === rankingKey) return;   // same window: keep the table, no request
    rankingKey = key;
    // The CSV is the same ranking, every published place (the table shows the top 25).
    const all = new URLSearchParams(q);
    all.set("limit", "100000");
    el.csv.href = `${API}/studies/${state.study.id}/rankings.csv?${all}`;
    el.csv.setAttribute("download", `swarmwatch-study${state.study.id}-${el.level.value}-${metric()}.csv`);
    const video = new URLSearchParams({ interval: el.interval.value, res: el.res.value, metric: metric() });
    if (el.title.value) video.set("title", el.title.value);
    el.video.href = `${API}/studies/${state.study.id}/video.mp4?${video}`;
    el.video.setAttribute("download", `swarmwatch-study${state.study.id}-${metric()}.mp4`);
    const perCapita = metric() === "per_capita";
    el.rankPlaceHead.textContent = { city: "City", metro: "Metro area", country: "Country" }[el.level.value];
    el.rankValueHead.hidden = !perCapita;
    el.rankCiHead.hidden = !perCapita;
    let body;
    let tag = null;
    try {
      const options = revalidate && rankingTag
        ? { cache: "no-store", headers: { "If-None-Match": rankingTag } } : {};
      const response = await fetch(`${API}/studies/${state.study.id}/rankings?${q}`, options);
      if (response.status === 304) return;  // the table on screen is current
      body = await response.json().catch(() => null);
      if (!response.ok) throw new Error(body && body.detail ? String(body.detail) : response.statusText);
      tag = response.headers.get("ETag");
    } catch (error) {
      if (key === rankingKey) {
        el.ranking.replaceChildren();
        el.rankNote.textContent = `No ranking: ${error.message}.`;
      }
      return;
    }
    if (key !== rankingKey) return;
    rankingTag = tag;
    const rows = body.rows || body.items || [];
    el.rankNote.textContent = rows.length
      ? (perCapita ? `Peers per 100,000 residents with a 95 % interval; places of at least ` +
        `${(body.min_population ?? MIN_POPULATION).toLocaleString("en")} residents.` : "")
      : "No place has reached the k threshold in this window.";
    el.ranking.replaceChildren(...rows.map((r, i) => {
      const tr = document.createElement("tr");
      const cells = [r.rank ?? i + 1, r.place ?? r.name ?? "", r.country ?? "",
        r.peers == null ? "" : formatNumber(Number(r.peers))];
      if (perCapita) {
        cells.push(r.per_100k == null ? "" : formatNumber(Number(r.per_100k)));
        cells.push(r.ci_low == null || r.ci_high == null ? ""
          : `${formatNumber(Number(r.ci_low))}–${formatNumber(Number(r.ci_high))}`);
      }
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.append(td);
      }
      return tr;
    }));
  }

  // ---- wiring -----------------------------------------------------------------------------

  el.play.addEventListener("click", () => (state.timer ? stop() : play()));
  el.slider.addEventListener("input", () => { stop(); showFrame(Number(el.slider.value)); });
  el.speed.addEventListener("change", () => { if (state.timer) { stop(); play(); } });
  el.study.addEventListener("change", () => selectStudy(null, 0));
  el.title.addEventListener("change", () => loadFrames(0));
  el.interval.addEventListener("change", () => loadFrames(0));
  el.res.addEventListener("change", () => loadFrames(state.index));
  el.window.addEventListener("change", () => loadRanking());
  el.level.addEventListener("change", () => loadRanking());
  el.live.addEventListener("change", schedulePoll);
  el.region.addEventListener("change", () => {
    const r = REGIONS[el.region.value] || REGIONS.world;
    if (!state.frames.length) return;
    Plotly.relayout(el.map, {
      "geo.center.lon": r.lon, "geo.center.lat": r.lat,
      "geo.projection.rotation.lon": r.lon, "geo.projection.scale": r.scale,
      uirevision: `region:${el.region.value}`,
    });
  });
  for (const radio of document.querySelectorAll("input[name=metric]")) {
    radio.addEventListener("change", () => {
      if (!state.frames.length) return;
      computeValues();
      state.drawn = false;
      el.level.value = metric() === "per_capita" ? "metro" : "city";
      draw().then(() => showFrame(state.index)).then(() => { state.drawn = true; });
      loadRanking();
    });
  }
  el.bubbles.addEventListener("change", () => {
    // A restyle redraws everything; plotly_afterplot then repaints the current frame.
    if (state.frames.length) Plotly.restyle(el.map, { visible: el.bubbles.checked }, [1]);
    drawBubbleLegend();
  });

  // For tests and the benchmark: a small read-only view of the player.
  window.swarmwatchMap = {
    showFrame: (i) => showFrame(i),
    get index() { return state.index; },
    get frameCount() { return state.frames.length; },
    get cellCount() { return state.ids.length; },
    values: () => state.raw[state.index],
    get ready() { return state.drawn; },
    get updates() { return state.updates; },
    refresh: () => refresh(state.loadSeq),
    get ids() { return state.ids.slice(); },
    population: () => state.population.slice(),
    // The bubbles of the current frame: [{name, value}] (per capita: metro areas' rates).
    bubbles: () => state.cities.map((c, i) => ({ name: c.name, value: state.cityValues[state.index][i] }))
      .filter((b) => b.value != null),
    // The SVG path data of each colour step as drawn now (what the viewer sees).
    painted: () => (state.paths ? state.paths.shown.slice() : []),
  };

  loadStudies().catch((error) => showEmpty(`The API did not answer: ${error.message}.`, true));
})();
