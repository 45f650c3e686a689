"""The CLI with typer's runner over a real database: one-line errors, non-zero exits."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from swarmwatch.auth import verify_api_key
from swarmwatch.cli import app
from swarmwatch.store import Database
from swarmwatch.store.models import Study, StudyKey, Torrent
from tests.torrent_files import make_torrent

runner = CliRunner()
IH = "89abcdef0123456789abcdef0123456789abcdef"


def test_db_upgrade_and_study_and_torrents(db_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["study", "create", "s1", "--title", "E1", "--k", "3"])
    assert result.exit_code == 0, result.output
    assert "study 1 created" in result.output
    result = runner.invoke(app, ["torrent", "add", f"magnet:?xt=urn:btih:{IH}", "--study", "1"])
    assert result.exit_code == 0, result.output
    assert IH in result.output
    path = tmp_path / "e.torrent"
    path.write_bytes(make_torrent(tmp_path / "p"))
    result = runner.invoke(app, ["torrent", "add", str(path), "--study", "1", "--title", "E1"])
    assert result.exit_code == 0, result.output
    db = Database(db_url)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Torrent)) == 2
        study = s.scalars(select(Study)).one()
        assert study.k_threshold == 3 and [t.name for t in study.titles] == ["E1"]
        # No key yet: the first pipeline makes it, wrapped with the deployment secret.
        assert s.get(StudyKey, study.id) is None
    db.dispose()


def test_errors_are_one_line_and_nonzero(db_url: str) -> None:
    assert runner.invoke(app, ["study", "create", "s1"]).exit_code == 0
    for args, fragment in [
        (["torrent", "add", "nothex", "--study", "1"], "infohash"),
        (["torrent", "add", IH, "--study", "99"], "study 99 not found"),
        (["torrent", "add", "magnet:?xt=urn:btih:zz", "--study", "1"], "magnet"),
        (["study", "create", "s1"], "exists"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert fragment in result.output
        assert "Traceback" not in result.output


def test_bad_database_url_is_a_clear_error(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setenv("SWARMWATCH_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    from swarmwatch.config import get_settings

    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["db", "upgrade"])
    finally:
        mp.undo()
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "cannot open database" in result.output


def test_apikey_create_prints_a_working_key_once(db_url: str) -> None:
    result = runner.invoke(app, ["apikey", "create", "--name", "lab"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    db = Database(db_url)
    with db.session() as s:
        assert verify_api_key(s, key) is not None
        assert verify_api_key(s, key + "x") is None
    db.dispose()
    raw = Path(db_url.removeprefix("sqlite:///")) if db_url.startswith("sqlite") else None
    if raw is not None:
        assert key.encode() not in raw.read_bytes()  # only the hash is stored


def test_help_explains_each_command() -> None:
    for cmd in (["--help"], ["serve", "--help"], ["torrent", "add", "--help"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, result.output


def test_export_writes_the_api_files(db_url: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["study", "create", "s1"]).exit_code == 0
    result = runner.invoke(app, ["export", "--study", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"rankings_city.csv", "rankings.json", "cities.geojson"} <= names
    result = runner.invoke(app, ["export", "--study", "7", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "study 7 not found" in result.output
    result = runner.invoke(app, ["export", "--study", "1", "--from", "yesterday"])
    assert result.exit_code == 1 and "--from" in result.output


def test_serve_with_workers_refuses_to_crawl_in_each_of_them() -> None:
    result = CliRunner().invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code != 0
    assert "--no-crawl" in result.output
