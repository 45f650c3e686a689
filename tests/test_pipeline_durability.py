"""Nothing accepted is lost (issue 8): a PostgreSQL restart mid-ingest, and kill -9 of a worker."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select, text

from swarmwatch.pipeline.geolocate import Geolocator
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database
from swarmwatch.store.models import Peer
from tests.pipeline_fixtures import INFOHASH, T0, addr, register, write_city_db
from tests.procs import reap

ROOT = Path(__file__).resolve().parent.parent
PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


def distinct_sightings(n: int) -> list[PeerSighting]:
    """n sightings of n different peers in Dallas's 24.0.0.0/12: none coalesce."""
    return [
        PeerSighting(
            INFOHASH,
            addr(f"24.{i >> 16}.{(i >> 8) & 255}.{i & 255}"),
            51413,
            Source.TRACKER,
            "v1",
            T0 + timedelta(milliseconds=i),
        )
        for i in range(1, n + 1)
    ]


class Cluster:
    """A throwaway PostgreSQL cluster of our own (scripts/postgres.sh), to stop and start."""

    def __init__(self) -> None:
        # Under /tmp itself: the server runs as user postgres, who cannot enter pytest's
        # private tmp_path; the script hands this directory to postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="swarmwatch-pg-"))
        out = subprocess.run(
            ["bash", str(ROOT / "scripts/postgres.sh"), "start", str(self.dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.url = out.stdout.strip().splitlines()[-1]
        self.port = urlparse(self.url.replace("postgresql+psycopg", "postgresql")).port
        self.bin = PG_BINS[-1]

    def _pg_ctl(self, *args: str) -> None:
        cmd = [f"{self.bin}/pg_ctl", "-D", str(self.dir / "data"), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def stop_immediately(self) -> None:
        """Like a crash: no shutdown checkpoint, every connection cut."""
        self._pg_ctl("stop", "-m", "immediate")

    def start(self) -> None:
        # The same options as scripts/postgres.sh, so the URL still points at it.
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
            " -c fsync=off -c max_connections=200"
        )
        self._pg_ctl("-l", str(self.dir / "server.log"), "-w", "-o", opts, "start")

    def remove(self) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts/postgres.sh"), "stop", str(self.dir)],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    if not PG_BINS:
        pytest.skip("PostgreSQL server binaries absent (/usr/lib/postgresql/*/bin)")
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.remove()


def assert_each_sighting_once(db: Database, n: int) -> None:
    with db.session() as s:
        assert s.scalar(text("SELECT sum(sightings) FROM rollup_activity")) == n
        assert s.scalar(select(func.count()).select_from(Peer)) == n
        assert s.scalar(select(func.sum(Peer.sightings))) == n


@pytest.mark.slow
def test_postgres_restart_mid_ingest_loses_nothing(own_postgres: Cluster, city_db: Path) -> None:
    db = Database(own_postgres.url)
    db.upgrade()
    register(db, ("alpha", [INFOHASH]))
    n = 4_000
    items = distinct_sightings(n)

    async def go() -> Pipeline:
        geo = Geolocator(city_db)
        # Small batches and a small buffer: the outage must back up into put().
        p = Pipeline(db, geolocator=geo, batch_size=100, queue_size=300, flush_seconds=0.05)
        await p.start()
        try:
            for s in items[:1_000]:
                await p.put(s)
            await p.flush()  # some batches are committed before the crash
            await asyncio.to_thread(own_postgres.stop_immediately)
            # Keep feeding while the server is down: the writer retries, the buffer
            # fills, and the rest of these puts wait for it (back-pressure).
            feeder = asyncio.ensure_future(p.put_many(items[1_000:]))
            while p.stats.write_retries < 3:
                await asyncio.sleep(0.05)
            assert not feeder.done()  # the crawler is held back, nothing is dropped
            await asyncio.to_thread(own_postgres.start)
            await asyncio.wait_for(feeder, 300)
            await asyncio.wait_for(p.close(), 300)
        finally:
            geo.close()
        return p

    try:
        p = asyncio.run(go())
        assert p.stats.lost == 0 and p.stats.write_retries >= 3
        assert p.stats.received == n and p.stats.stored == n
        assert_each_sighting_once(db, n)
    finally:
        db.dispose()


CHILD = textwrap.dedent(
    """
    import asyncio, ipaddress, sys
    from datetime import UTC, datetime, timedelta
    from swarmwatch.pipeline.geolocate import Geolocator
    from swarmwatch.pipeline.pipeline import Pipeline
    from swarmwatch.sightings import PeerSighting, Source
    from swarmwatch.store import Database

    url, city, infohash, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = datetime(2026, 11, 27, 12, tzinfo=UTC)

    async def main():
        geo = Geolocator(city)
        p = Pipeline(Database(url), geolocator=geo, batch_size=50, flush_seconds=0.05)
        await p.start()
        for i in range(1, n + 1):
            ip = ipaddress.IPv4Address((24 << 24) + i)
            await p.put(PeerSighting(infohash, ip, 1, Source.TRACKER, "v1",
                                     t0 + timedelta(milliseconds=i)))
            if i == 500:
                await p.flush()
                print("flushed", i, flush=True)
            print("accepted", i, flush=True)
            if i % 10 == 0:
                await asyncio.sleep(0)  # a crawler yields to the loop between replies
        await asyncio.sleep(3600)  # wait for the kill

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_kill_9_loses_only_what_was_not_flushed(db: Database, db_url: str, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(city_db), INFOHASH, "20000"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    accepted = 0
    flushed = False
    try:
        assert child.stdout is not None
        for line in child.stdout:
            word, count = line.split()
            flushed = flushed or word == "flushed"
            accepted = max(accepted, int(count))
            if flushed and accepted >= 3_000:
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=60)
        # The rest from the same reader: communicate() would read the pipe itself and skip
        # what this file object had already buffered, so its text could start mid-line.
        # Lines printed before the kill landed; one the kill cut short has no newline.
        for line in child.stdout.read().split("\n")[:-1]:
            accepted = max(accepted, int(line.split()[1]))
    finally:
        reap(child)
    assert child.returncode == -signal.SIGKILL and flushed
    with db.session() as s:
        stored = s.scalar(select(func.sum(Peer.sightings))) or 0
        # One put may have been accepted after its line was printed... never before it.
        assert 500 <= stored <= accepted + 1
        # Each batch is one transaction: its peers and its rollups agree.
        assert s.scalar(text("SELECT sum(sightings) FROM rollup_activity")) == stored
        assert s.scalar(select(func.count()).select_from(Peer)) == stored
