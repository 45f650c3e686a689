"""`pip install .` (a wheel, not editable) serves the map and the API from any directory:
migrations, web assets and data ship inside the package; benchmarks do not."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What a source distribution of the project holds (what the wheel is built from).
SOURCES = ("swarmwatch", "migrations", "web", "pyproject.toml", "setup.py", "MANIFEST.in")

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh venv holding only the wheel; its dependencies are this venv's (no download)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in (*SOURCES, "README.md", "alembic.ini"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SWARMWATCH_"))}
    env["SWARMWATCH_LOOPBACK_ONLY"] = "true"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", str(tmp / "dist"), str(src)], tmp, env)
    (wheel,) = (tmp / "dist").glob("swarmwatch-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "-q", "install", "--no-deps", "--no-index", str(wheel)], tmp, env
    )
    # Dependencies from this venv, after the wheel's own site-packages (a plain path entry:
    # this venv's .pth files, among them the editable install's, are not run there).
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.check_output([str(python), "-c", where], env=env, text=True)
    (Path(purelib.strip()) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield venv, env


def test_wheel_ships_migrations_and_web_but_no_benchmarks(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    code = (
        "import swarmwatch, swarmwatch.store.database as d, swarmwatch.api.routes.web as w;"
        "import swarmwatch.pipeline.places as p;"
        "print(swarmwatch.__file__); print(d.MIGRATIONS_DIR); print(w.WEB_DIR);"
        "print(p.URBAN_POPULATIONS)"
    )
    where = run([str(venv / "bin" / "python"), "-c", code], tmp_path, env).split()
    assert all(str(venv) in line for line in where), where
    assert (Path(where[2]) / "index.html").is_file()
    assert Path(where[3]).is_file()  # the metro builder's urban-area estimates
    assert list((Path(where[1]) / "versions").glob("0001_*.py"))
    done = subprocess.run(
        [str(venv / "bin" / "swarmwatch"), "bench", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "source checkout" in done.stderr


def test_installed_wheel_upgrades_and_serves_from_another_directory(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    env = {**env, "SWARMWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'study.db'}"}
    swarmwatch = str(venv / "bin" / "swarmwatch")
    assert "up to date" in run([swarmwatch, "db", "upgrade"], tmp_path, env)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [swarmwatch, "serve", "--no-crawl", "--port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else None
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and "app.js" in page.text  # the map, not a stand-in
        assert httpx.get(f"{url}/web/app.js", timeout=30).status_code == 200
        studies = httpx.get(f"{url}/api/v1/studies", timeout=30)
        assert studies.status_code == 200 and studies.json()["items"] == []
        assert httpx.get(f"{url}/docs", timeout=30).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
