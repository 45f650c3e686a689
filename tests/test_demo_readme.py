"""The README's API examples, run as written (bash + curl) against a running `swarmwatch demo`:
the key the demo prints works, the examples make their own study and leave the demo's alone."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from swarmwatch import PROJECT_ROOT
from swarmwatch.config import get_settings
from swarmwatch.demo import DemoInfo, run_demo
from swarmwatch.store import Database
from swarmwatch.store.models import Study, Torrent
from tests.torrent_files import make_torrent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="apt-get install curl"),
]
DEMO_TORRENTS = 3


def readme_blocks() -> list[str]:
    """The README's sh blocks that talk to the API: the registration examples and the reads."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    api = [b for b in blocks if "KEY=sw_" in b]
    reads = [b for b in blocks if "$API/studies/1/summary" in b]
    assert len(api) == 1 and len(reads) == 1
    return [api[0], reads[0]]


def test_readme_api_examples_work_against_the_demo(tmp_path: Path) -> None:
    settings = get_settings().model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'demo.db'}", "loopback_only": True}
    )
    ready = threading.Event()
    found: list[DemoInfo] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_ready(info: DemoInfo) -> None:
        found.append(info)
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(
            run_demo(settings, port=0, peers=5000, torrents=DEMO_TORRENTS, stop=stop,
                     on_ready=on_ready)
        )  # fmt: skip

    thread = threading.Thread(target=run, name="demo", daemon=True)
    thread.start()
    try:
        assert ready.wait(300), "the demo did not start"
        info = found[0]
        assert info.api_key.startswith("sw_")
        # The reads (and the video) need a published frame: wait for the crawl's first.
        frames_url = f"{info.url}/api/v1/studies/{info.study_id}/frames"
        deadline = time.monotonic() + 300
        while not httpx.get(frames_url, timeout=60).json()["frames"]:
            assert time.monotonic() < deadline, "the demo published no frame in 5 minutes"
            time.sleep(0.5)
        # What a reader does: paste the key the demo printed, point API at the demo.
        script = "\n".join(readme_blocks())
        script = script.replace("KEY=sw_...", f"KEY={info.api_key}")
        script = script.replace("http://127.0.0.1:8000", info.url)
        # Any HTTP error fails the run (the examples use curl -s, which would hide it).
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
        work = tmp_path / "reader"
        work.mkdir()
        (work / "episode.torrent").write_bytes(make_torrent(work / "payload"))
        done = subprocess.run(
            ["bash", "-c", prelude + script],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert (work / "countries.csv").read_text().startswith("rank,place,")
        assert (work / "timelapse.mp4").stat().st_size > 10_000
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(120)
    assert not thread.is_alive()
    loop.close()  # its self-pipe sockets, or a later test trips over them as warnings

    db = Database(settings.database_url)
    try:
        with db.session() as session:
            studies = {s.name: s.id for s in session.scalars(select(Study))}
            query = select(Torrent.study_id, func.count()).group_by(Torrent.study_id)
            counts = {study_id: n for study_id, n in session.execute(query)}
    finally:
        db.dispose()
    # The demo's study keeps exactly its own torrents; the examples' study has the two
    # that were not deleted.
    assert counts[info.study_id] == DEMO_TORRENTS
    assert counts[studies["GoT S07E01"]] == 2
