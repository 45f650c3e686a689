"""`swarmwatch export --out` refuses unsafe targets in one line, never writes through a symlink."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarmwatch.cli import app
from swarmwatch.safefiles import OutputFolder, UnsafeTarget

runner = CliRunner()


@pytest.fixture
def study(db_url: str) -> str:
    made = runner.invoke(app, ["study", "create", "exported"])
    assert made.exit_code == 0, made.output
    return made.output.split()[1]


def export(study: str, out: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["export", "--study", study, "--out", str(out)])
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, *words: str) -> None:
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    for word in words:
        assert word in lines[0], output


def test_out_is_an_existing_file(study: str, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code, output = export(study, target)
    assert_one_line_error(code, output, "not a folder")
    assert target.read_text() == "keep me"


def test_out_is_a_dangling_symlink(study: str, tmp_path: Path) -> None:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    code, output = export(study, link)
    assert_one_line_error(code, output, "symlink")
    assert not (tmp_path / "nowhere").exists()


def test_out_is_a_symlink_to_a_folder(study: str, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "real")
    code, output = export(study, link)
    assert_one_line_error(code, output, "symlink")
    assert list((tmp_path / "real").iterdir()) == []


def test_symlink_inside_the_folder_is_refused_and_its_target_untouched(
    study: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "rankings_city.csv").symlink_to(victim)
    code, output = export(study, out)
    assert_one_line_error(code, output, "rankings_city.csv", "symlink")
    assert victim.read_text() == "precious"
    # A dangling one is refused too (it would have created its target).
    (out / "rankings_city.csv").unlink()
    (out / "cities.geojson").symlink_to(tmp_path / "created-elsewhere")
    code, output = export(study, out)
    assert_one_line_error(code, output, "cities.geojson", "symlink")
    assert not (tmp_path / "created-elsewhere").exists()


def test_a_second_export_replaces_its_own_files(study: str, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def files() -> dict[str, bytes]:
        # The clock's second is the one thing two exports may not share: when the export
        # was written (generated_at) and when its figures were read (data_read_at).
        stamp = re.compile(rb'"(generated_at|data_read_at)": "[^"]*"')
        return {p.name: stamp.sub(b"", p.read_bytes()) for p in out.iterdir()}

    assert export(study, out)[0] == 0
    first = files()
    assert export(study, out)[0] == 0
    assert files() == first  # the same files, no temp files left


def test_a_symlink_swapped_in_while_writing_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with OutputFolder(tmp_path / "out") as folder:
        with folder.open_text("a.csv") as fh:
            fh.write("new")
            # An attacker plants the symlink after the check, before the rename.
            os.symlink(victim, tmp_path / "out" / "a.csv")
    assert victim.read_text() == "precious"
    assert (tmp_path / "out" / "a.csv").read_text() == "new"
    assert not (tmp_path / "out" / "a.csv").is_symlink()


def test_unsafe_names_are_refused(tmp_path: Path) -> None:
    with OutputFolder(tmp_path) as folder:
        for name in ("../x", "", ".."):
            with pytest.raises(UnsafeTarget):
                folder.write_text(name, "x")
