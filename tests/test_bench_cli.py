"""`swarmwatch bench NAME` runs from any directory (benchmarks live in bench/, outside the
runtime package) and never needs the tests package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SWARMWATCH = Path(sys.executable).with_name("swarmwatch")


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(SWARMWATCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_bench_list_from_another_directory(tmp_path: Path) -> None:
    done = run(["bench", "list"], tmp_path)
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    assert {"browser", "ingest", "load", "query"} <= set(names) and "server" not in names


def test_benchmarks_are_not_in_the_runtime_package() -> None:
    assert not (ROOT / "swarmwatch" / "bench").exists()
    code = (
        "import sys, bench.browser, bench.load, bench.query;"
        "print(sorted(m for m in sys.modules if m == 'tests' or m.startswith('tests.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # bench browser used to import tests.conftest


def test_unknown_benchmark_is_one_line(tmp_path: Path) -> None:
    done = run(["bench", "nope"], tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "unknown benchmark" in done.stderr


@pytest.mark.slow
def test_bench_browser_runs_from_another_directory(tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("apt-get install chromium")
    done = run(
        ["bench", "browser", "frames=3", "cells=40", "switches=3", "baseline=1"], tmp_path, 600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "frame switch: median" in done.stdout
