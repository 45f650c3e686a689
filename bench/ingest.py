"""Ingest benchmark: end-to-end sightings/s into SQLite, against a bare maxminddb lookup loop.

Two streams of synthetic public IPv4 addresses (data only, never destinations) go
through the real Pipeline into a fresh SQLite file with the embedded GeoLite2 City.
Besides wall-clock rates it prints CPU time per sighting (this process, and the
geolocation worker if workers=1) and per bare lookup: on a machine shared with other
work, the CPU figures move much less than the wall-clock ones.

The pipeline places IPv4 addresses from the City database's range table
(pipeline.rangetable), built once per database file and kept in the user's cache
directory. It is made ready before the clocks start, as a running crawler has it
from its start; the time that took (a build on the first run on a machine, a read of
the cache file after) is printed beside the figures.

A second baseline is the storage floor: the peer and presence rows (and batch tokens)
each run stored, inserted again into a fresh database of the same schema with plain multi-row
INSERTs on a bare sqlite3 connection (same pragmas, same number of transactions), and
nothing else: no geolocation, no hashing, no upsert logic, no rollups. No pipeline
that stores those rows can beat it, so it shows how much of a goal is in reach of the
schema itself, and how much of the pipeline's time is its own.

Last, a CPU budget: the all-unique stream runs a second time without the rollups, and
from the CPU a sighting costs (every process) and the machine's cores the bench
prints the best rates those cores could reach with every core busy. No split of the
work into threads or processes beats them, so a goal above its ceiling needs less
work per sighting, not more parallelism.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import random
import resource
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import maxminddb

from swarmwatch.custody import KeyCustody
from swarmwatch.geoip import embedded_city_db
from swarmwatch.pipeline.geolocate import Geolocator, range_table, special_reason
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database
from swarmwatch.store.chunks import row_chunks
from swarmwatch.store.database import SQLITE_PRAGMAS
from swarmwatch.store.models import Study, Title, Torrent
from swarmwatch.store.writer import WRITER_SQLITE_PRAGMAS

INFOHASH = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed"
T0 = datetime(2026, 11, 27, tzinfo=UTC)
DAY = 86_400.0
#: Goals from issue 4.
REPEAT_GOAL_PER_S = 200_000.0
UNIQUE_GOAL_RATIO = 1.0


def public_addresses(n: int, seed: int) -> list[ipaddress.IPv4Address]:
    """n distinct addresses drawn uniformly from public IPv4 space."""
    rng = random.Random(seed)
    seen: set[int] = set()
    out: list[ipaddress.IPv4Address] = []
    while len(out) < n:
        k = rng.getrandbits(32)
        if k in seen or special_reason(k) is not None:
            continue
        seen.add(k)
        out.append(ipaddress.IPv4Address(k))
    return out


def repeat_stream(addrs: list[ipaddress.IPv4Address], repeats: int) -> list[PeerSighting]:
    """Each peer seen `repeats` times within seconds (five trackers answering one round),
    peers spread over a day."""
    step = DAY / max(1, len(addrs))
    return [
        PeerSighting(
            INFOHASH, ip, 6881, Source.TRACKER, "bench", T0 + timedelta(seconds=i * step + r)
        )
        for i, ip in enumerate(addrs)
        for r in range(repeats)
    ]


def unique_stream(addrs: list[ipaddress.IPv4Address]) -> list[PeerSighting]:
    step = DAY / max(1, len(addrs))
    return [
        PeerSighting(INFOHASH, ip, 6881, Source.DHT, "bench", T0 + timedelta(seconds=i * step))
        for i, ip in enumerate(addrs)
    ]


def bare_lookup_rate(city_db: Path, addrs: list[ipaddress.IPv4Address]) -> tuple[float, float]:
    """The baseline: one thread, reader.get() for every address, no cache.

    Returns (lookups per second, CPU microseconds per lookup)."""
    reader = maxminddb.open_database(str(city_db))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for ip in addrs:
            reader.get(ip)
        cpu = time.process_time() - c0
        return len(addrs) / (time.perf_counter() - t0), 1e6 * cpu / len(addrs)
    finally:
        reader.close()


#: The tables the pipeline writes a row to per peer, per frame a peer has moved on from, or
#: per batch.
#: The rollup counters get a few rows per place, cell and frame in a batch and are left
#: out. A repeat sighting adds no row (it updates its peer's).
FLOOR_TABLES = ("peer", "rollup_presence", "write_batch")


def _floor_rows(path: Path) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """The rows a run stored, per floor table, in the order the writer inserted them."""
    src = sqlite3.connect(path)
    try:
        out = {}
        for table in FLOOR_TABLES:
            cursor = src.execute(
                f"SELECT * FROM {table} ORDER BY rowid"
                if table != "rollup_presence"
                else f"SELECT * FROM {table}"
            )
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            out[table] = (columns, rows)
    finally:
        src.close()
    # Presence has no rowid: the writer met its keys frame by frame, peers in random order.
    columns, rows = out["rollup_presence"]
    order = random.Random(0)
    order.shuffle(rows)
    rows.sort(key=lambda r: (r[1], r[2]))  # interval, bucket; stable: random within
    return out


def storage_floor(path: Path, batches: int, into: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows) to store a run's floor rows again, bare.

    `batches` transactions, as the pipeline used, each with its share of every table.
    """
    tables = _floor_rows(path)
    _fresh_database(into).dispose()  # the same schema, study, title and torrent
    conn = sqlite3.connect(into, isolation_level=None)
    try:
        for pragma in (*SQLITE_PRAGMAS, *WRITER_SQLITE_PRAGMAS):  # the writer's own
            conn.execute(pragma)
        batches = max(1, batches)
        plans = []
        for table, (columns, rows) in tables.items():
            row_sql = "(" + ", ".join("?" * len(columns)) + ")"
            head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            plans.append((head, row_sql, rows))
        t0, c0 = time.perf_counter(), time.process_time()
        for b in range(batches):
            conn.execute("BEGIN")
            for head, row_sql, rows in plans:
                part = rows[len(rows) * b // batches : len(rows) * (b + 1) // batches]
                for start, stop in row_chunks(len(part)):
                    chunk = part[start:stop]
                    conn.execute(
                        head + ", ".join([row_sql] * len(chunk)),
                        [v for row in chunk for v in row],
                    )
            conn.execute("COMMIT")
        return (
            time.perf_counter() - t0,
            time.process_time() - c0,
            sum(len(rows) for _, _, rows in plans),
        )
    finally:
        conn.close()


def _children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's ended children (the worker)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def _fresh_database(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    with db.session() as s:
        study = Study(name="bench")
        s.add(study)
        s.flush()
        title = Title(study_id=study.id, name="bench")
        s.add(title)
        s.flush()
        s.add(Torrent(study_id=study.id, title_id=title.id, infohash_v1=INFOHASH))
    return db


def _ingest_measured(
    db: Database, city_db: Path, stream: list[PeerSighting], workers: int, rollups: bool
) -> tuple[float, dict[str, int], tuple[float, float]]:
    """_ingest, plus CPU microseconds per sighting: this process's while the clock ran,
    and the worker process's (all its life: a child's CPU is known once it has ended)."""
    children0 = _children_cpu_seconds()
    rate, stats, own = asyncio.run(_ingest(db, city_db, stream, workers, rollups))
    children1 = _children_cpu_seconds()  # the worker has ended: geo.close() waited for it
    n = max(1, len(stream))
    return rate, stats, (1e6 * own / n, 1e6 * (children1 - children0) / n)


async def _ingest(
    db: Database, city_db: Path, stream: list[PeerSighting], workers: int, rollups: bool
) -> tuple[float, dict[str, int], float]:
    """Sightings per second, the pipeline's counters, and this process's CPU seconds
    while the clock ran (not the setup's: the range table's load, the pipeline's start)."""
    geo = await asyncio.to_thread(Geolocator, city_db, workers=workers)
    # A throw-away database: a secret that lives only in this process wraps its keys.
    pipeline = Pipeline(db, geolocator=geo, rollups=rollups, custody=KeyCustody.ephemeral())
    await pipeline.start()
    await geo.warm()  # the worker process starts lazily: warm it before the clock runs
    # The stream was just built (hundreds of thousands of objects, which a crawler never
    # holds at once): its first full garbage collection belongs before the clock, not to
    # whichever batch it would otherwise interrupt.
    gc.collect()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for s in stream:
        await pipeline.put(s)
    await pipeline.close()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    geo.close()
    return len(stream) / elapsed, pipeline.stats.as_dict(), cpu


def cpu_budget(
    *,
    cores: int,
    bare_cpu: float,
    unique_cpu: float,
    unique_cpu_without_rollups: float,
    repeat_cpu: float,
) -> dict[str, float]:
    """The best rates the machine's cores allow at the CPU a sighting costs (microseconds,
    every process): no split into threads or processes can beat them, since it only
    spreads the same work over the cores. `*_ceiling_vs_bare` is the all-unique goal's
    ratio at that best (the bare loop uses one core at bare_cpu per lookup)."""
    return {
        "cores": float(cores),
        "unique_cpu_vs_bare": unique_cpu / bare_cpu,
        "unique_rollups_cpu_us_per_sighting": unique_cpu - unique_cpu_without_rollups,
        "unique_ceiling_vs_bare": cores * bare_cpu / unique_cpu,
        "unique_ceiling_vs_bare_without_rollups": cores * bare_cpu / unique_cpu_without_rollups,
        "repeat_ceiling_sightings_per_s": cores * 1e6 / repeat_cpu,
    }


def run_benchmark(**options: Any) -> dict[str, float]:
    """Options: peers=100000 (repeat stream: peers x 5), unique=200000, repeats=5,
    workers=0 (geolocation processes: with the range table they serve IPv6 only),
    rollups=True (False also leaves out the CPU budget's second all-unique run), seed=1."""
    peers = int(options.get("peers", 100_000))
    unique = int(options.get("unique", 200_000))
    repeats = int(options.get("repeats", 5))
    workers = int(options.get("workers", 0))
    rollups = bool(options.get("rollups", True))
    seed = int(options.get("seed", 1))
    city_db = embedded_city_db()
    city_db.read_bytes()  # into the page cache, for the baseline and the pipeline alike
    t0 = time.perf_counter()
    table = range_table(city_db)  # built on a machine's first run, read from its cache after
    table_seconds = time.perf_counter() - t0

    unique_addrs = public_addresses(unique, seed)
    repeat_addrs = public_addresses(peers, seed + 1)
    baseline, baseline_cpu = bare_lookup_rate(city_db, unique_addrs)

    with tempfile.TemporaryDirectory(prefix="swarmwatch-bench-") as tmp:
        db = _fresh_database(Path(tmp) / "repeat.db")
        repeat_rate, repeat_stats, repeat_cpu = _ingest_measured(
            db, city_db, repeat_stream(repeat_addrs, repeats), workers, rollups
        )
        db.dispose()
        db = _fresh_database(Path(tmp) / "unique.db")
        unique_rate, unique_stats, unique_cpu = _ingest_measured(
            db, city_db, unique_stream(unique_addrs), workers, rollups
        )
        db.dispose()
        # The same stream again without the rollups: what they cost, for the CPU budget.
        no_rollups_cpu = unique_cpu
        if rollups:
            db = _fresh_database(Path(tmp) / "unique-no-rollups.db")
            _, _, no_rollups_cpu = _ingest_measured(
                db, city_db, unique_stream(unique_addrs), workers, False
            )
            db.dispose()
        # Peak RSS of the pipeline runs, before the floors read their rows into memory.
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        repeat_floor = storage_floor(
            Path(tmp) / "repeat.db", repeat_stats["batches"], Path(tmp) / "repeat-floor.db"
        )
        unique_floor = storage_floor(
            Path(tmp) / "unique.db", unique_stats["batches"], Path(tmp) / "unique-floor.db"
        )
    # The machine may have changed meanwhile: the faster of the two runs is the baseline.
    baseline_again, baseline_cpu_again = bare_lookup_rate(city_db, unique_addrs)
    baseline = max(baseline, baseline_again)
    baseline_cpu = min(baseline_cpu, baseline_cpu_again)
    load = os.getloadavg()

    unique_hit = 1 - unique_stats["geo_lookups"] / max(1, unique)
    budget = cpu_budget(
        cores=len(os.sched_getaffinity(0)),
        bare_cpu=baseline_cpu,
        unique_cpu=sum(unique_cpu),
        unique_cpu_without_rollups=sum(no_rollups_cpu),
        repeat_cpu=sum(repeat_cpu),
    )
    repeat_n = peers * repeats
    # The floor as sightings of the stream per second: what the schema allows at best.
    repeat_floor_rate = repeat_n / repeat_floor[0]
    unique_floor_rate = unique / unique_floor[0]
    figures = {
        "repeat_sightings_per_s": repeat_rate,
        "unique_sightings_per_s": unique_rate,
        "bare_lookups_per_s": baseline,
        "unique_vs_bare": unique_rate / baseline,
        "repeat_vs_goal": repeat_rate / REPEAT_GOAL_PER_S,
        "repeat_rows_stored": float(repeat_stats["stored"]),
        "unique_rows_stored": float(unique_stats["stored"]),
        "unique_network_cache_hit": unique_hit,
        "peak_rss_mib": rss_self,
        "peak_rss_worker_mib": rss_children,
        "repeat_cpu_us_per_sighting": repeat_cpu[0],
        "repeat_worker_cpu_us_per_sighting": repeat_cpu[1],
        "unique_cpu_us_per_sighting": unique_cpu[0],
        "unique_worker_cpu_us_per_sighting": unique_cpu[1],
        "bare_cpu_us_per_lookup": baseline_cpu,
        "repeat_floor_sightings_per_s": repeat_floor_rate,
        "unique_floor_sightings_per_s": unique_floor_rate,
        "repeat_floor_rows": float(repeat_floor[2]),
        "unique_floor_rows": float(unique_floor[2]),
        "repeat_floor_cpu_us_per_sighting": 1e6 * repeat_floor[1] / max(1, repeat_n),
        "unique_floor_cpu_us_per_sighting": 1e6 * unique_floor[1] / max(1, unique),
        "repeat_vs_floor": repeat_rate / repeat_floor_rate,
        "unique_vs_floor": unique_rate / unique_floor_rate,
        "unique_floor_vs_bare": unique_floor_rate / baseline,
        "range_table_seconds": table_seconds,
        "range_table_ranges": float(len(table)),
        "load_average_1min": load[0],
        **budget,
    }
    print(
        "ingest benchmark: embedded GeoLite2 City into SQLite, "
        f"rollups {'on' if rollups else 'off'}, {workers} geolocation worker process(es)"
    )
    print(
        f"  repeat stream ({peers:,} peers x {repeats}): {repeat_rate:,.0f} sightings/s "
        f"({repeat_rate / REPEAT_GOAL_PER_S:.2f}x the 200k goal; {repeat_stats['stored']:,} rows, "
        f"{repeat_stats['coalesced']:,} repeats coalesced)"
    )
    print(
        f"  all-unique stream ({unique:,}): {unique_rate:,.0f} sightings/s; "
        f"placed without a database lookup (range table or network cache) {unique_hit:.1%}"
    )
    print(
        f"  bare maxminddb lookup loop (same addresses, one thread): {baseline:,.0f} lookups/s; "
        f"all-unique / bare = {unique_rate / baseline:.2f}x (goal >= {UNIQUE_GOAL_RATIO:.1f}x)"
    )
    print(
        f"  CPU per sighting: repeat {repeat_cpu[0]:.1f} us + {repeat_cpu[1]:.1f} us (worker); "
        f"all-unique {unique_cpu[0]:.1f} us + {unique_cpu[1]:.1f} us (worker); "
        f"bare lookup {baseline_cpu:.1f} us"
    )
    print(
        "  storage floor (the rows each run stored: peer, presence, batch tokens; inserted again"
        " with plain INSERTs on a bare connection, nothing else):"
    )
    print(
        f"    repeat: {repeat_floor[2]:,} rows, {repeat_floor_rate:,.0f} sightings/s "
        f"({repeat_floor_rate / REPEAT_GOAL_PER_S:.2f}x the 200k goal; the pipeline reached "
        f"{repeat_rate / repeat_floor_rate:.0%} of it), CPU "
        f"{1e6 * repeat_floor[1] / max(1, repeat_n):.1f} us per sighting"
    )
    print(
        f"    all-unique: {unique_floor[2]:,} rows, {unique_floor_rate:,.0f} sightings/s "
        f"({unique_floor_rate / baseline:.2f}x the bare lookup loop; the pipeline reached "
        f"{unique_rate / unique_floor_rate:.0%} of it), CPU "
        f"{1e6 * unique_floor[1] / max(1, unique):.1f} us per sighting"
    )
    print(
        f"  IPv4 range table: {len(table):,} ranges, ready in {table_seconds:.2f} s before the "
        "clocks started (built once per database file, then read from the user's cache)"
    )
    print(
        f"  CPU budget on {budget['cores']:.0f} core(s), at the CPU each sighting cost here "
        "(main and worker), with every core busy and nothing lost to waiting:"
    )
    print(
        f"    all-unique: {sum(unique_cpu):.1f} us = {budget['unique_cpu_vs_bare']:.1f}x a bare "
        f"lookup, of which the rollups {budget['unique_rollups_cpu_us_per_sighting']:.1f} us; "
        f"at best {budget['unique_ceiling_vs_bare']:.2f}x the bare loop "
        f"({budget['unique_ceiling_vs_bare_without_rollups']:.2f}x without the rollups)"
    )
    print(
        f"    repeat: {sum(repeat_cpu):.1f} us per sighting; at best "
        f"{budget['repeat_ceiling_sightings_per_s']:,.0f} sightings/s "
        f"({budget['repeat_ceiling_sightings_per_s'] / REPEAT_GOAL_PER_S:.2f}x the 200k goal)"
    )
    print(f"  peak RSS: {rss_self:,.0f} MiB (main), {rss_children:,.0f} MiB (worker)")
    print(f"  load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return figures


if __name__ == "__main__":
    run_benchmark()
