"""geoip info and install (from local files only: tests never download), study seal command."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from swarmwatch.config import Settings, get_settings
from swarmwatch.custody import KeyCustody
from swarmwatch.pipeline.anonymise import ensure_study_key
from swarmwatch.pipeline.cli import geoip_app, study_seal_command
from swarmwatch.pipeline.geoipdb import (
    GeoipError,
    active_city_db,
    database_info,
    geoip_info,
    install_file,
    installed_path,
)
from swarmwatch.store import Database
from swarmwatch.store.models import Study, StudyKey
from tests.pipeline_fixtures import write_asn_db, write_city_db


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(geoip_dir=str(tmp_path / "geoip"))


def test_embedded_database_is_labelled_stale() -> None:
    (info,) = geoip_info(Settings(), now=datetime(2026, 11, 27, tzinfo=UTC))
    assert info.embedded and info.stale
    assert info.database_type == "GeoLite2-City" and info.build_date.year == 2018
    assert info.warning is not None and "swarmwatch geoip install" in info.warning


def test_install_verifies_and_swaps(settings: Settings, tmp_path: Path) -> None:
    first = install_file(write_city_db(tmp_path / "a.mmdb"), settings)
    target = installed_path(settings)
    assert first.path == target and active_city_db(settings) == target
    assert not first.embedded and first.database_type == "GeoIP2-City"
    before = target.read_bytes()

    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(before[: len(before) // 3])
    with pytest.raises(GeoipError):
        install_file(corrupt, settings)
    with pytest.raises(GeoipError, match="not City"):
        install_file(write_asn_db(tmp_path / "asn.mmdb"), settings)
    assert target.read_bytes() == before  # failed installs changed nothing
    assert sorted(p.name for p in target.parent.iterdir()) == ["city.mmdb"]  # no leftovers

    newer = install_file(write_city_db(tmp_path / "b.mmdb", "DBIP-City-Lite"), settings)
    assert newer.database_type == "DBIP-City-Lite"
    assert database_info(target).database_type == "DBIP-City-Lite"


def test_cli_geoip_info_and_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMWATCH_GEOIP_DIR", str(tmp_path / "geoip"))
    get_settings.cache_clear()
    runner = CliRunner()
    info = runner.invoke(geoip_app, ["info"])
    assert info.exit_code == 0, info.output
    assert "GeoLite2-City" in info.output and "STALE" in info.output
    bad = runner.invoke(geoip_app, ["install", "--file", str(write_asn_db(tmp_path / "asn.mmdb"))])
    assert bad.exit_code == 1
    ok = runner.invoke(geoip_app, ["install", "--file", str(write_city_db(tmp_path / "c.mmdb"))])
    assert ok.exit_code == 0, ok.output
    info = runner.invoke(geoip_app, ["info"])
    assert "GeoIP2-City" in info.output and "STALE" not in info.output


def test_cli_study_seal(db: Database) -> None:
    with db.session() as s:
        study = Study(name="to seal")
        s.add(study)
        s.flush()
        ensure_study_key(s, study.id, KeyCustody.from_settings(get_settings()))
        study_id = study.id
    app = typer.Typer()
    app.command()(study_seal_command)
    runner = CliRunner()
    result = runner.invoke(app, [str(study_id), "--yes"])
    assert result.exit_code == 0, result.output
    with db.session() as s:
        assert s.get(StudyKey, study_id) is None
        sealed = s.get(Study, study_id)
        assert sealed is not None and sealed.sealed_at is not None
    assert "already sealed" in runner.invoke(app, [str(study_id), "--yes"]).output
    assert runner.invoke(app, ["999", "--yes"]).exit_code == 1
