"""No child process outlives its parent: kill -9 of a pipeline leaves no geolocation worker behind.

Before issue 13 the spawned ProcessPoolExecutor workers ran on for good, reparented to
PID 1, after their parent was SIGKILLed (a supervisor restarting an OOM-killed crawler
piled them up, ~110 MB each).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from swarmwatch.store import Database
from tests.pipeline_fixtures import INFOHASH, register, write_city_db
from tests.procs import reap

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import asyncio, ipaddress, sys
    from datetime import UTC, datetime
    from swarmwatch.pipeline.pipeline import Pipeline
    from swarmwatch.config import Settings
    from swarmwatch.sightings import PeerSighting, Source
    from swarmwatch.store import Database

    url, city, infohash = sys.argv[1], sys.argv[2], sys.argv[3]

    async def main():
        # geo_workers=1 as `swarmwatch crawl`, `serve` and `demo` run it (service.py).
        settings = Settings(geoip_city=city, database_url=url)
        p = Pipeline(Database(url), settings=settings, geo_workers=1, flush_seconds=0.05)
        await p.start()
        for i in range(1, 200):
            ip = ipaddress.IPv4Address((24 << 24) + (i << 8))
            await p.put(PeerSighting(infohash, ip, 1, Source.TRACKER, "v1", datetime.now(UTC)))
        await p.flush()  # the misses went through the worker process: it exists now
        print("flushed", flush=True)
        await asyncio.sleep(3600)  # wait for the kill

    asyncio.run(main())
    """
)


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkilled_pipeline_leaves_no_geolocation_worker(
    tmp_path: Path, db_url: str, db: Database
) -> None:
    city = write_city_db(tmp_path / "city.mmdb")
    register(db, ("alpha", [INFOHASH]))
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(city), INFOHASH],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    children: set[int] = set()
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "flushed"
        children = descendants(parent.pid)
        assert children, "the pipeline started no geolocation worker process"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_until(
            "every child of the killed pipeline to exit",
            lambda: not any(alive(c) for c in children),
            timeout=30,
        )
    finally:
        reap(parent)
        _kill_all(children)  # a failed run must not leave them running either


# The middle process forks a child that watches it, prints the child's pid and waits to be
# killed. The child is forked from a thread that exits at once: PR_SET_PDEATHSIG would
# have fired then (it follows the forking thread); the watch must follow the process.
MIDDLE = textwrap.dedent(
    """
    import os, threading, time
    from swarmwatch.parentwatch import exit_with_parent

    def fork_watched():
        # Taken before the fork, as exit_with_parent asks: read in the child it could
        # already be init's (the test kills this process as soon as it prints the pid).
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            exit_with_parent(parent, poll_seconds=0.05)
            time.sleep(3600)
            os._exit(0)
        print(pid, flush=True)

    t = threading.Thread(target=fork_watched)
    t.start()
    t.join()
    time.sleep(3600)
    """
)


def test_exit_with_parent_follows_the_process_not_the_forking_thread() -> None:
    middle = subprocess.Popen(
        [sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    watched: set[int] = set()
    try:
        assert middle.stdout is not None
        watched = {int(middle.stdout.readline())}
        (pid,) = watched
        # Its forking thread is gone; it lives on as long as its parent does.
        assert alive(pid) and pid in descendants(middle.pid)
        middle.send_signal(signal.SIGKILL)
        middle.wait(timeout=30)
        wait_until("the watched child to exit", lambda: not alive(pid), timeout=30)
    finally:
        reap(middle)
        _kill_all(watched)


def test_exit_with_parent_exits_at_once_if_already_orphaned() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from swarmwatch.parentwatch import exit_with_parent;"
            " exit_with_parent(os.getppid() + 1_000_000); print('survived')",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 1 and "survived" not in done.stdout


BENCH_PARENT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from bench.server import serve

    proc, base = serve(sys.argv[1])
    print(proc.pid, flush=True)
    time.sleep(3600)
    """
)


@pytest.mark.slow
def test_sigkilled_benchmark_leaves_no_server(tmp_path: Path) -> None:
    """bench.server's uvicorn child (run through `python -m swarmwatch.parentwatch`)."""
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    Database(url).upgrade()
    parent = subprocess.Popen(
        [sys.executable, "-c", BENCH_PARENT, url, str(ROOT)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    children: set[int] = set()
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        children = descendants(parent.pid)
        assert server in children
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_until("the benchmark's server to exit", lambda: not alive(server), timeout=30)
    finally:
        reap(parent)
        _kill_all(children)


@pytest.mark.slow
def test_sigkilled_serve_with_workers_leaves_no_worker(tmp_path: Path) -> None:
    """`swarmwatch serve --workers 2`: uvicorn's worker processes end with the supervisor."""
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {**os.environ, "SWARMWATCH_DATABASE_URL": url, "SWARMWATCH_LOOPBACK_ONLY": "true"}
    swarmwatch = str(Path(sys.executable).with_name("swarmwatch"))
    subprocess.run([swarmwatch, "db", "upgrade"], env=env, check=True, capture_output=True)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        parent = subprocess.Popen(
            [swarmwatch, "serve", "--no-crawl", "--workers", "2", "--port", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    children: set[int] = set()
    try:
        wait_until(
            "both workers to start",
            lambda: log.read_text().count("Application startup complete") >= 2,
            timeout=120,
        )
        children = descendants(parent.pid)
        assert len(children) >= 2, log.read_text()
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_until(
            "every worker of the killed server to exit",
            lambda: not any(alive(c) for c in children),
            timeout=30,
        )
    finally:
        reap(parent)
        _kill_all(children)
