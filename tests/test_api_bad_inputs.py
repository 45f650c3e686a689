"""Odd inputs that answered 500 (issue 13): now a 4xx with a JSON detail, or stored safely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from swarmwatch.cli import app as cli_app
from swarmwatch.registry import RegistryInputError, parse_magnet
from swarmwatch.store import Database
from swarmwatch.store.models import Study, Torrent

IH = "0123456789abcdef0123456789abcdef01234567"


def make_study(client: httpx.Client, **extra: object) -> int:
    r = client.post("/api/v1/studies", json={"name": "odd inputs", "titles": ["T"], **extra})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def assert_client_error(r: httpx.Response, *statuses: int) -> None:
    assert r.status_code in statuses, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert detail and (isinstance(detail, str) or isinstance(detail, list)), r.text


def test_magnet_with_non_utf8_name_is_stored_with_replacement_characters(
    client: httpx.Client, db: Database
) -> None:
    sid = make_study(client)
    magnet = f"magnet:?xt=urn:btih:{IH}&dn=%ff%feEpisode%ed%a0%80"
    r = client.post("/api/v1/torrents", json={"study_id": sid, "magnet": magnet})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "\ufffd\ufffdEpisode\ufffd\ufffd\ufffd"
    with db.session() as s:
        assert s.scalar(select(Torrent.name)) == "\ufffd\ufffdEpisode\ufffd\ufffd\ufffd"


def test_magnet_with_non_utf8_tracker_is_refused(client: httpx.Client) -> None:
    sid = make_study(client)
    magnet = f"magnet:?xt=urn:btih:{IH}&tr=http://127.0.0.1:1/%ff"
    r = client.post("/api/v1/torrents", json={"study_id": sid, "magnet": magnet})
    assert r.status_code in (201, 422), r.text
    assert isinstance(r.json(), dict)


def test_cli_torrent_add_with_non_utf8_name(db_url: str, db: Database) -> None:
    runner = CliRunner()
    env = {"SWARMWATCH_DATABASE_URL": db_url}
    made = runner.invoke(cli_app, ["study", "create", "cli odd"], env=env)
    assert made.exit_code == 0, made.output
    sid = made.output.split()[1]  # "study 1 created: cli odd"
    magnet = f"magnet:?xt=urn:btih:{IH}&dn=%ff%fe"
    added = runner.invoke(cli_app, ["torrent", "add", magnet, "--study", sid], env=env)
    assert added.exit_code == 0, added.output
    with db.session() as s:
        assert s.scalar(select(Torrent.name)) == "\ufffd\ufffd"


def test_json_nested_100000_deep(client: httpx.Client) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/v1/torrents", "/api/v1/studies", "/api/v1/geometry/h3"):
        r = client.post(path, content=deep, headers={"Content-Type": "application/json"})
        assert_client_error(r, 400, 422)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "\ud800"},
        {"name": "ok", "titles": ["a\udfffb"]},
        {"name": "ok", "description": "\udbff"},
    ],
)
def test_lone_surrogates_in_study_text_are_refused(client: httpx.Client, body: dict) -> None:  # type: ignore[type-arg]
    r = client.post(
        "/api/v1/studies",
        # httpx would refuse to encode a lone surrogate: send the JSON escape itself.
        content=_json_with_escapes(body),
        headers={"Content-Type": "application/json"},
    )
    assert_client_error(r, 422)


def test_lone_surrogate_in_torrent_title_is_refused(client: httpx.Client) -> None:
    sid = make_study(client)
    body = {"study_id": sid, "infohash": IH, "title": "\ud800"}
    r = client.post(
        "/api/v1/torrents",
        content=_json_with_escapes(body),
        headers={"Content-Type": "application/json"},
    )
    assert_client_error(r, 422)


def _json_with_escapes(body: object) -> bytes:
    import json

    return json.dumps(body).encode()  # ensure_ascii: a surrogate becomes \\udXXX


@pytest.mark.parametrize("path", ["summary", "frames", "rankings", "cells.geojson"])
@pytest.mark.parametrize("bound", ["to", "from"])
def test_dates_at_the_end_of_time(client: httpx.Client, path: str, bound: str) -> None:
    sid = make_study(client)
    for moment in (
        "9999-12-31T23:59:59",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00",
        "0001-01-01T00:00:00+01:00",
    ):
        r = client.get(f"/api/v1/studies/{sid}/{path}", params={bound: moment})
        assert r.status_code in (200, 422), (moment, r.text)
        assert r.headers["content-type"].startswith("application/")


@pytest.mark.parametrize("res", [8, 9, 12, 15])
def test_geometry_of_fine_cells_is_refused(live_server: str, res: int) -> None:
    import h3

    cell = h3.latlng_to_cell(52.5, 13.4, res)
    r = httpx.post(f"{live_server}/api/v1/geometry/h3", json={"cells": [cell]})
    assert_client_error(r, 422)
    assert "resolution" in r.json()["detail"]


def test_web_path_with_nul_is_404(live_server: str) -> None:
    for path in ("/web/index.html%00.js", "/web/%00", "/web/app.js%00"):
        r = httpx.get(f"{live_server}{path}")
        assert_client_error(r, 404)


@pytest.mark.parametrize("k", [True, False, "5", 5.5])
def test_k_threshold_must_be_a_json_integer(client: httpx.Client, db: Database, k: object) -> None:
    r = client.post("/api/v1/studies", json={"name": f"k {k!r}", "k_threshold": k})
    assert_client_error(r, 422)
    with db.session() as s:
        assert s.scalar(select(Study.id).where(Study.name == f"k {k!r}")) is None


@pytest.mark.parametrize("k", [7, 7.0])  # JSON Schema: 7.0 is an integer too
def test_k_threshold_integer_is_kept(client: httpx.Client, k: object) -> None:
    r = client.post("/api/v1/studies", json={"name": "k 7", "k_threshold": k})
    assert r.status_code == 201 and r.json()["k_threshold"] == 7


@given(raw=st.binary(max_size=64), tail=st.text(max_size=32))
@settings(max_examples=300, deadline=None, database=None)
def test_any_magnet_name_bytes_parse_or_are_refused(raw: bytes, tail: str) -> None:
    """Whatever bytes a dn (or what follows it) holds: a name a database can store, or
    RegistryInputError; never UnicodeDecodeError (the 500 of issue 13)."""
    magnet = f"magnet:?xt=urn:btih:{IH}&dn={quote_from_bytes(raw)}{tail}"
    try:
        parsed = parse_magnet(magnet)
    except RegistryInputError:
        return
    assert parsed.infohash_v1 == IH
    if parsed.name is not None:
        parsed.name.encode("utf-8")  # no lone surrogate
        assert "\x00" not in parsed.name


def test_cli_refuses_text_that_is_not_utf8(db_url: str, db: Database) -> None:
    """argv bytes that are not UTF-8 reach Python as lone surrogates: a one-line error."""
    env = {**os.environ, "SWARMWATCH_DATABASE_URL": db_url}
    swarmwatch = str(Path(sys.executable).with_name("swarmwatch"))
    for args in (
        [b"study", b"create", b"bad\xff"],
        [b"study", b"create", b"ok", b"--title", b"\xfe"],
        [b"torrent", b"add", IH.encode(), b"--study", b"1", b"--title", b"\xff"],
    ):
        command = [swarmwatch.encode(), *args]
        done = subprocess.run(command, env=env, capture_output=True, timeout=120)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        assert len(lines) == 1 and "UTF-8" in lines[0], lines
    with db.session() as s:
        assert s.scalar(select(Study.id)) is None
