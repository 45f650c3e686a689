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
  // Cells (and cities) with fewer inhabitants than this are hidden in the per-capita
  // view: a village with five peers would otherwise top the map. The same floor as the
  // API's per-capita rankings (DEFAULT_MIN_POPULATION in swarmwatch.analysis.rankings).
  const MIN_POPULATION = 100000;

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
      for (const id of ["title", "interval", "res", "rankPanel"]) $(id).closest("label, aside").hidden = true;
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
    try {
      body = EMBED || await getJSON(`${API}/studies/${study.id}/frames?${q}`);
    } catch (error) {
      if (seq === state.loadSeq) showEmpty(`Could not load the time-lapse: ${error.message}.`, true);
      return;
    }
    if (seq !== state.loadSeq) return;
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
        const cityIds = [...new Set(frames.flatMap((f) => f.cities.map((c) => c.geoname_id)))]
          .filter((id) => Number.isInteger(id));
        outlines = await getJSON(`${API}/geometry/h3`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ cells: ids, cities: cityIds }),
        });
      } catch (error) {
        if (seq === state.loadSeq) showEmpty(`Could not load hexagon outlines: ${error.message}.`, true);
        return;
      }
    }
    if (seq !== state.loadSeq) return;
    clearMessage();
    el.main.hidden = false;
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
    state.index = Math.min(Math.max(Number(startFrame) || 0, 0), frames.length - 1);
    computeValues();
    await draw();
    if (seq !== state.loadSeq) return;
    await showFrame(state.index);
    state.drawn = true;
    loadRanking();
  }

  /* Frames as [{t: Date, cells: Map(h3 -> peers), cities: [{geoname_id, name, country,
   * lat, lon, peers}]}] from either form of the API's answer. The compact form names
   * each cell once in body.cells and each city once in body.cities; a frame lists its
   * cells as gaps between ascending indices (cell_gaps) with cell_peers beside them,
   * and its top cities as indices (city) with city_peers beside them. */
  function decodeFrames(body) {
    if (body.format !== "compact") {
      return (body.frames || []).map((f) => ({
        t: new Date(typeof f.t === "number" ? f.t * 1000 : f.t),
        cells: new Map(f.cells.map((c) => [c.h3, c.peers])),
        cities: f.top_cities || [],
      }));
    }
    const names = body.cells || [];
    const table = body.cities || [];
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

  // plotly's YlOrRd, low to high (given explicitly so both sides use the same stops).
  const COLORSCALE = [
    [0, "rgb(255,255,204)"], [0.125, "rgb(255,237,160)"], [0.25, "rgb(254,217,118)"],
    [0.375, "rgb(254,178,76)"], [0.5, "rgb(253,141,60)"], [0.625, "rgb(252,78,42)"],
    [0.75, "rgb(227,26,28)"], [0.875, "rgb(189,0,38)"], [1, "rgb(128,0,38)"],
  ];
  const STOPS = COLORSCALE.map(([at, rgb]) => [at, rgb.match(/\d+/g).map(Number)]);

  // Colours are quantised to this many steps between zmin and zmax (the colour bar's
  // range): too fine to see on the map, and each step is one SVG path (see findPaths).
  const COLOR_STEPS = 64;
  const PALETTE = Array.from({ length: COLOR_STEPS + 1 }, (_, k) => interpolate(k / COLOR_STEPS));
  const SVG_NS = "http://www.w3.org/2000/svg";
  const OUTLINE_MAX_CELLS = 1000;

  /* The colour plotly gives x in [0, 1] of the range (linear RGB between stops). */
  function interpolate(x) {
    let k = 1;
    while (k < STOPS.length - 1 && STOPS[k][0] < x) k++;
    const [a, ca] = STOPS[k - 1];
    const [b, cb] = STOPS[k];
    const f = (x - a) / (b - a);
    return `rgb(${ca.map((c, j) => Math.round(c + f * (cb[j] - c))).join(",")})`;
  }

  /* Every city that is in some frame's top list, so the bubble layer is drawn once. */
  function collectCities() {
    const perCapita = metric() === "per_capita";
    const byKey = new Map();
    for (const frame of state.frames) {
      for (const c of frame.cities) {
        if (c.lat == null || c.lon == null) continue;
        if (perCapita && !((c.population || 0) >= MIN_POPULATION)) continue;
        const key = c.geoname_id ?? `${c.name}|${c.lat}|${c.lon}`;
        if (!byKey.has(key)) byKey.set(key, { key, name: c.name, country: c.country, lat: c.lat, lon: c.lon });
      }
    }
    state.cities = [...byKey.values()];
    state.cityIndex = new Map(state.cities.map((c, i) => [c.key, i]));
    // Per frame: bubble value per city (null: not in that frame's list).
    state.cityValues = state.frames.map((frame) => {
      const values = new Array(state.cities.length).fill(null);
      for (const c of frame.cities) {
        const i = state.cityIndex.get(c.geoname_id ?? `${c.name}|${c.lat}|${c.lon}`);
        if (i === undefined) continue;
        values[i] = perCapita ? (c.peers * PER_CAPITA_UNIT) / c.population : c.peers;
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
        ticktext: ticks.text, thickness: 14, len: 0.8 },
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
    const layout = {
      margin: { l: 0, r: 0, t: 0, b: 0 },
      geo: {
        // The whole world, whatever the data: a time-lapse is about where in the world.
        projection: { type: "natural earth", rotation: { lon: 0 } },
        center: { lon: 0, lat: 10 },
        lonaxis: { range: [-180, 180] },
        lataxis: { range: [-60, 85] },
        fitbounds: false,
        showland: true, landcolor: "#eef0f2",
        showocean: true, oceancolor: "#dfe9f3",
        showcountries: true, countrycolor: "#b8bec8",
        showcoastlines: true, coastlinecolor: "#9aa2ad",
        showframe: false,
        resolution: 110,
      },
      hovermode: "closest",
      uirevision: "keep",           // keep the user's zoom across redraws
    };
    const config = {
      // plotly's geo basemap comes from this server, never from plotly's CDN.
      topojsonURL: "/web/topojson/",
      displaylogo: false,
      responsive: true,
    };
    state.paths = null;
    return Plotly.react(el.map, [hexes, bubbles], layout, config).then(() => {
      bindPlotlyEvents();
      paint();
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
          path.setAttribute("stroke-width", "1.5");
          path.setAttribute("stroke-linejoin", "round");
          layer.append(path);
        });
        choropleth.after(layer);
      }
      // A few scattered res-4 hexagons (~40 km, under a pixel on a world map) would be
      // invisible: an outline in the same colour makes each one a dot. Outlines cost
      // ~5x the paint time, so many hexagons (which show as clusters anyway) get none.
      const outlined = state.ids.length <= OUTLINE_MAX_CELLS;
      [...layer.children].forEach((path, k) => {
        path.setAttribute("stroke", outlined ? PALETTE[k] : "none");
      });
    }
    const cities = [...el.map.querySelectorAll(".scatterlayer path.point")];
    state.paths = {
      ds,
      buckets: layer ? [...layer.children] : [],
      shown: new Array(PALETTE.length).fill(""),
      cities: cities.length === state.cities.length ? cities : [],
    };
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
      text = `${c.name}${c.country ? ", " + c.country : ""}\n${formatNumber(v)} ${valueLabel()}`;
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
  const formatLocal = (d) => localFormat.format(d);

  // ---- player -----------------------------------------------------------------------------

  function play() {
    if (state.timer || state.frames.length < 2) return;
    el.play.textContent = "⏸ Pause";
    el.play.setAttribute("aria-label", "pause");
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
    el.play.textContent = "▶ Play";
    el.play.setAttribute("aria-label", "play");
  }

  // ---- ranking ----------------------------------------------------------------------------

  function rankingQuery() {
    const q = new URLSearchParams({ level: "city", metric: metric(), limit: "25" });
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
  async function loadRanking() {
    if (!state.study || EMBED) return;
    const q = rankingQuery();
    const key = `${state.study.id}?${q}`;
    if (key === rankingKey) return;   // same window: keep the table, no request
    rankingKey = key;
    // The CSV is the same ranking, every published place (the table shows the top 25).
    const all = new URLSearchParams(q);
    all.set("limit", "100000");
    el.csv.href = `${API}/studies/${state.study.id}/rankings.csv?${all}`;
    el.csv.setAttribute("download", `swarmwatch-study${state.study.id}-${metric()}.csv`);
    el.rankValueHead.textContent = metric() === "per_capita" ? "Peers per 100k" : "Peers";
    let body;
    try {
      body = await getJSON(`${API}/studies/${state.study.id}/rankings?${q}`);
    } catch (error) {
      if (key === rankingKey) {
        el.ranking.replaceChildren();
        el.rankNote.textContent = `No ranking: ${error.message}.`;
      }
      return;
    }
    if (key !== rankingKey) return;
    const rows = body.rows || body.items || [];
    el.rankNote.textContent = rows.length ? "" : "No place has reached the k threshold in this window.";
    el.ranking.replaceChildren(...rows.map((r, i) => {
      const tr = document.createElement("tr");
      const value = metric() === "per_capita" ? r.per_100k : r.peers;
      for (const text of [r.rank ?? i + 1, r.place ?? r.name ?? "", r.country ?? "",
        value == null ? "" : formatNumber(Number(value))]) {
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
  el.window.addEventListener("change", loadRanking);
  for (const radio of document.querySelectorAll("input[name=metric]")) {
    radio.addEventListener("change", () => {
      if (!state.frames.length) return;
      computeValues();
      state.drawn = false;
      draw().then(() => showFrame(state.index)).then(() => { state.drawn = true; });
      loadRanking();
    });
  }
  el.bubbles.addEventListener("change", () => {
    // A restyle redraws everything; plotly_afterplot then repaints the current frame.
    if (state.frames.length) Plotly.restyle(el.map, { visible: el.bubbles.checked }, [1]);
  });

  // For tests and the benchmark: a small read-only view of the player.
  window.swarmwatchMap = {
    showFrame: (i) => showFrame(i),
    get index() { return state.index; },
    get frameCount() { return state.frames.length; },
    get cellCount() { return state.ids.length; },
    values: () => state.raw[state.index],
    get ready() { return state.drawn; },
    get ids() { return state.ids.slice(); },
    population: () => state.population.slice(),
    // The SVG path data of each colour step as drawn now (what the viewer sees).
    painted: () => (state.paths ? state.paths.shown.slice() : []),
  };

  loadStudies().catch((error) => showEmpty(`The API did not answer: ${error.message}.`, true));
})();
