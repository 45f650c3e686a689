"""Crawler workers as real processes on a real PostgreSQL server, against simulated trackers.

Two `swarmwatch crawl` workers of one vantage split the swarms by lease, a
worker of a second vantage crawls all of them again; then one worker is killed
with SIGKILL, the database server restarts, and a tracker stops. At the end
every sighting a surviving worker accepted is in the database.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from swarmwatch.store import Database

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
INFOHASHES = [f"{i:02x}" * 20 for i in (0xA1, 0xB2, 0xC3, 0xD4)]
#: Short leases so a takeover happens within seconds (production: 45 s / 15 s).
LEASE_SECONDS = 3.0
HEARTBEAT_SECONDS = 0.5
FLUSH_SECONDS = 0.5


def _pg_ctl(cmd: str, directory: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts/postgres.sh"), cmd, str(directory)], check=True)


@pytest.fixture(scope="module")
def pg() -> Iterator[tuple[str, Path]]:
    """A throwaway PostgreSQL cluster of our own, so other test runs are not disturbed."""
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="swarmwatch-pg-"))
    os.chmod(directory, 0o755)
    # Output to a file, not a pipe: the server inherits it and would hold a pipe open forever.
    with (directory / "url").open("w") as out:
        subprocess.run(
            ["bash", str(ROOT / "scripts/postgres.sh"), "start", str(directory)],
            check=True,
            stdout=out,
        )
    url = (directory / "url").read_text().strip()
    yield url, directory
    _pg_ctl("stop", directory)
    shutil.rmtree(directory, ignore_errors=True)


def restart_postgres(directory: Path) -> None:
    """pg_ctl restart as the postgres user: every open connection is cut."""
    binary = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    cmd = [str(binary / "pg_ctl"), "-D", str(directory / "data"), "-m", "fast", "-w", "restart"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class TrackerThread:
    """SimTrackers over one simulated swarm, served from their own event loop thread."""

    def __init__(self, swarm: Any, count: int) -> None:
        from swarmwatch.sim.trackers import SimTracker

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.trackers = [
            self._call(SimTracker(swarm, interval=1, min_interval=1, seed=i).start())
            for i in range(count)
        ]

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self, index: int) -> None:
        self._call(self.trackers[index].aclose())

    def close(self) -> None:
        for t in self.trackers:
            self._call(t.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Worker:
    def __init__(self, vantage: str, env: dict[str, str], log_dir: Path, n: int) -> None:
        self.vantage = vantage
        self.log = log_dir / f"worker-{vantage}-{n}.log"
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "swarmwatch.cli", "crawl", "--vantage", vantage]
                + ["--crawlers", "tracker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def worker_id(self) -> str | None:
        m = re.search(r"\(worker (\S+)\)", self.output)
        return m.group(1) if m else None

    def last_logged(self) -> dict[str, int]:
        """The last per-heartbeat pipeline line: what was committed at that moment."""
        lines = re.findall(
            r"pipeline: received (\d+), stored (\d+), lost (\d+), queue (\d+)", self.output
        )
        if not lines:
            return {"received": 0, "stored": 0}
        received, stored, _lost, _queue = (int(x) for x in lines[-1])
        return {"received": received, "stored": stored}

    def final_stats(self) -> dict[str, int]:
        m = re.search(r"stopped; pipeline: (\{.*?\})", self.output, re.S)
        assert m, self.output[-3000:]
        stats: dict[str, int] = ast.literal_eval(m.group(1).replace("\n", " "))
        return stats

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_workers_split_leases_survive_kill_restart_and_tracker_loss(
    pg: tuple[str, Path], tmp_path: Path
) -> None:
    from swarmwatch.pipeline.places import load_places
    from swarmwatch.registry import create_study, parse_infohash, register_torrent
    from swarmwatch.sim import SimulatedSwarm, build_index
    from tests.pipeline_fixtures import write_city_db

    url, pg_dir = pg
    city_db = write_city_db(tmp_path / "city.mmdb")
    swarm = SimulatedSwarm(
        seed=3, n_peers=600, torrents=INFOHASHES, index=build_index(city_db), diurnal=False
    )
    trackers = TrackerThread(swarm, 2)
    db = Database(url)
    db.upgrade()
    load_places(db)  # once here: workers racing to load GeoNames would only slow the start
    with db.session() as session:
        study = create_study(session, "multi-vantage")
        for ih in INFOHASHES:
            register_torrent(
                session,
                study.id,
                parse_infohash(ih),
                # One tier each: within a tier BEP 12 announces to the first tracker that
                # works and no other, so a stopped tracker that no swarm of a vantage had
                # shuffled first was never asked, and its errors were waited for in vain.
                extra_trackers=tuple((t.http_url, i) for i, t in enumerate(trackers.trackers)),
            )

    def scalar(sql: str, **params: Any) -> int:
        with db.engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar() or 0)

    def holders(vantage: str) -> dict[str, int]:
        with db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT worker_id, count(*) FROM crawl_lease WHERE vantage = :v"
                    " AND worker_id IS NOT NULL AND expires_at > now() GROUP BY worker_id"
                ),
                {"v": vantage},
            ).all()
        return {str(w): int(n) for w, n in rows}

    def rows(vantage: str) -> int:
        return scalar(
            "SELECT coalesce(sum(sightings), 0) FROM rollup_activity WHERE vantage = :v",
            v=vantage,
        )

    def answered(vantage: str, after: int) -> int:
        # Progress is judged by samples: sightings are counted only once per coalescing window.
        return scalar(
            "SELECT count(*) FROM sample WHERE vantage = :v AND error IS NULL AND id > :m",
            v=vantage,
            m=after,
        )

    def last_sample() -> int:
        return scalar("SELECT coalesce(max(id), 0) FROM sample")

    env = {
        **os.environ,
        "SWARMWATCH_DATABASE_URL": url,
        "SWARMWATCH_GEOIP_CITY": str(city_db),
        "SWARMWATCH_LOOPBACK_ONLY": "true",
        "SWARMWATCH_DHT_BOOTSTRAP": "",
        "SWARMWATCH_TRACKER_MIN_INTERVAL": "0",
        "SWARMWATCH_LEASE_SECONDS": str(LEASE_SECONDS),
        "SWARMWATCH_LEASE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "SWARMWATCH_WRITER_FLUSH_SECONDS": str(FLUSH_SECONDS),
        "COLUMNS": "10000",  # rich must not wrap the stats line we parse
        "PYTHONPATH": str(ROOT),
    }
    workers = [Worker("va", env, tmp_path, 1), Worker("va", env, tmp_path, 2)]
    workers.append(Worker("vb", env, tmp_path, 1))
    try:
        # Two workers of one vantage split the four swarms; the other vantage takes all four.
        wait_for(
            "leases split",
            lambda: (
                sorted(holders("va").values()) == [2, 2]
                and holders("vb") == {workers[2].worker_id: 4}
            ),
        )
        victim, survivor = workers[0], workers[1]
        # The victim must have committed something, for the kill -9 bound below to mean anything.
        wait_for("commits from both vantages", lambda: rows("va") > 0 and rows("vb") > 0)
        wait_for("the victim's first logged commit", lambda: victim.last_logged()["stored"] > 0)

        # kill -9: the survivor of vantage va takes over the dead worker's swarms.
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        killed_at = last_sample()
        wait_for(
            "takeover", lambda: holders("va") == {survivor.worker_id: 4}, timeout=6 * LEASE_SECONDS
        )
        # ... and crawls them: every swarm gets new va samples after the takeover.
        wait_for(
            "all four swarms crawled by the survivor",
            lambda: (
                scalar(
                    "SELECT count(DISTINCT torrent_id) FROM sample"
                    " WHERE vantage = 'va' AND id > :k",
                    k=killed_at,
                )
                == 4
            ),
        )

        # The database server restarts under the workers: they reconnect and go on.
        mark = last_sample()
        restart_postgres(pg_dir)
        wait_for(
            "samples written after the restart",
            lambda: answered("va", mark) > 0 and answered("vb", mark) > 0,
            timeout=45,
        )
        assert survivor.proc.poll() is None and workers[2].proc.poll() is None

        # A tracker goes away: its announces become counted errors, nothing crashes.
        stopped_url = trackers.trackers[1].http_url
        mark = last_sample()
        trackers.stop(1)
        wait_for(
            "errors from the stopped tracker for both vantages",
            lambda: (
                scalar(
                    "SELECT count(DISTINCT vantage) FROM sample WHERE tracker_url = :u"
                    " AND error IS NOT NULL AND id > :m",
                    u=stopped_url,
                    m=mark,
                )
                == 2
            ),
            # Tiers announce at most every 5 s now (tracker.crawler.HARD_MIN_INTERVAL,
            # issue 14), not every second: room for a loaded machine.
            timeout=90,
        )
        mark = last_sample()
        wait_for(
            "answers from the remaining tracker",
            lambda: answered("va", mark) > 0 and answered("vb", mark) > 0,
        )
        assert survivor.proc.poll() is None and workers[2].proc.poll() is None

        # SIGTERM: each survivor flushes and prints what its pipeline did.
        assert survivor.stop() == 0, survivor.output[-3000:]
        assert workers[2].stop() == 0, workers[2].output[-3000:]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(timeout=10)
        trackers.close()

    sa, sb = survivor.final_stats(), workers[2].final_stats()
    assert sa["lost"] == 0 and sb["lost"] == 0, (sa, sb)
    assert sb["stored"] > 0 and sa["stored"] > 0
    # A peer is new once per title, to whichever worker commits it first: which vantage
    # that is, is a race (vb's worker starts last, and may find every peer already known).
    assert 0 <= sa["new_peers"] + sb["new_peers"] <= len(swarm.peers), (sa, sb)
    # Vantage vb had one worker, which never died: the database holds exactly what it accepted.
    assert rows("vb") == sb["stored"]
    # Vantage va: the survivor's rows exactly, plus what the killed worker had committed:
    # at least what it had logged as stored at its last heartbeat (what it held beyond
    # that was at most one flush interval of sightings, in memory, and died with it).
    killed = victim.last_logged()
    from_victim = rows("va") - sa["stored"]
    assert killed["stored"] > 0 and killed["stored"] <= from_victim, (killed, from_victim)
    # The stopped tracker left a failure count and its last error on its rows.
    assert scalar("SELECT max(failures) FROM tracker WHERE url = :u", u=stopped_url) >= 1
    # Released on SIGTERM: no live lease is left behind by a clean exit.
    assert holders("va") == {} and holders("vb") == {}

    # No simulated peer address in any worker's log (the privacy rule holds under failure too).
    logs = "\n".join(w.output for w in workers)
    leaked = [
        p for p in swarm.peers if re.search(rf"(?<![\d.:]){re.escape(str(p.ip))}(?![\d])", logs)
    ]
    assert not leaked, f"{len(leaked)} peer address(es) in worker logs"
    db.dispose()
