"""Every route of the app, for every role, on a public and a private study (issue 15).

RULES says what each route of the real route table needs; a route the app serves
without a rule here fails test_every_route_has_a_rule, so a new route cannot ship
without its access rule being written down and tested. The expected status comes
from the rule alone (expected()), never from the code under test.

Roles: the study's owner, a key granted read, a key granted write, another key,
an admin key (CLI-made) and no key. Another key gets 403 on writes to a study it
can see and 404 on a private study; no key gets 401 where a key is needed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarmwatch import access, registry
from swarmwatch.api import create_app
from swarmwatch.auth import create_api_key, revoke_api_key, verify_api_key
from swarmwatch.config import Settings
from swarmwatch.store import Database
from swarmwatch.store.models import StudyGrant, Torrent
from tests.conftest import LiveServer

ROLES = ("owner", "reader", "writer", "other", "admin", "anonymous")
#: What each role may do on the studies of the fixture (by grant, ownership or admin).
RANK = {"anonymous": 0, "other": 0, "reader": 1, "writer": 2, "owner": 3, "admin": 4}
NEED = {"read": 1, "write": 2, "owner": 3}
OK = {"GET": 200, "POST": 201, "DELETE": 204}

#: (method, path) of every route -> its rule:
#:   public  anyone, no study data           key   any valid key (401 without)
#:   list    anyone; lists only what the caller may read
#:   read    a study's data: anyone if public; owner, grantees, admin if private (else 404)
#:   write   change a study: owner, writer, admin (403 for others who can see it)
#:   owner   manage a study's grants: owner, admin
#:   admin   an admin key only (401 without a key, 403 with another)
RULES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/metrics"): "admin",  # every study's exact figures, private ones too
    ("GET", "/"): "public",
    ("GET", "/web/plotly.min.js"): "public",
    ("GET", "/web/{name:path}"): "public",
    ("POST", "/api/v1/geometry/h3"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/docs/assets/{name}"): "public",  # Swagger UI's files, served locally
    ("GET", "/api/v1/keys/me"): "key",
    ("POST", "/api/v1/studies"): "key",
    ("GET", "/api/v1/studies"): "list",
    ("GET", "/api/v1/torrents"): "list",
    ("GET", "/api/v1/studies/{study_id}"): "read",
    ("GET", "/api/v1/studies/{study_id}/summary"): "read",
    ("GET", "/api/v1/studies/{study_id}/rankings"): "read",
    ("GET", "/api/v1/studies/{study_id}/rankings.csv"): "read",
    ("GET", "/api/v1/studies/{study_id}/rankings.json"): "read",
    ("GET", "/api/v1/studies/{study_id}/frames"): "read",
    ("GET", "/api/v1/studies/{study_id}/cells.geojson"): "read",
    ("GET", "/api/v1/studies/{study_id}/cities.geojson"): "read",
    ("GET", "/api/v1/studies/{study_id}/video.mp4"): "read",
    ("GET", "/api/v1/torrents/{infohash}"): "read",
    ("POST", "/api/v1/torrents"): "write",
    ("DELETE", "/api/v1/torrents/{infohash}"): "write",
    ("GET", "/api/v1/studies/{study_id}/grants"): "owner",
    ("POST", "/api/v1/studies/{study_id}/grants"): "owner",
    ("DELETE", "/api/v1/studies/{study_id}/grants/{api_key_id}"): "owner",
}


def expected(rule: str, role: str, private: bool) -> int:
    """The status a role must get, from the rule alone."""
    if rule in ("public", "list"):
        return 200
    if rule == "key":
        return 401 if role == "anonymous" else 0  # 0: the route's success status
    if rule == "admin":
        return 401 if role == "anonymous" else 0 if role == "admin" else 403
    if rule == "read":
        return 404 if private and RANK[role] < NEED["read"] else 0
    if role == "anonymous":
        return 401
    if private and RANK[role] < NEED["read"]:
        return 404
    return 0 if RANK[role] >= NEED[rule] else 403


@dataclass
class World:
    client: httpx.Client
    app: Any
    db: Database
    keys: dict[str, str]  # role -> key
    key_ids: dict[str, int]
    studies: dict[bool, int]  # private? -> study id
    infohash: dict[bool, str]


def _key_ids(db: Database, keys: dict[str, str]) -> dict[str, int]:
    with db.session() as s:
        out = {}
        for role, key in keys.items():
            row = verify_api_key(s, key)
            assert row is not None
            out[role] = row.id
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path: Path = tmp_path_factory.mktemp("access") / "access.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    with db.session() as s:
        keys = {role: create_api_key(s, role, admin=role == "admin") for role in ROLES[:-1]}
        keys["spare"] = create_api_key(s, "spare")
    ids = _key_ids(db, keys)
    studies, hashes = {}, {}
    with db.session() as s:
        for private in (False, True):
            study = registry.create_study(
                s,
                f"{'private' if private else 'public'} study",
                private=private,
                titles=["E1"],
                owner_key_id=ids["owner"],
            )
            access.grant(s, study, ids["reader"], "read")
            access.grant(s, study, ids["writer"], "write")
            ih = secrets.token_hex(20)
            registry.register_torrent(s, study.id, registry.parse_infohash(ih))
            studies[private], hashes[private] = study.id, ih
    settings = Settings(
        database_url=f"sqlite:///{path}",
        api_answer_cache_seconds=0,
        api_write_burst=10_000,
        api_read_burst=10_000,
    )
    app = create_app(settings, db)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield World(client, app, db, keys, ids, studies, hashes)
    db.dispose()


def _request(world: World, method: str, path: str, private: bool) -> tuple[str, dict[str, Any]]:
    """A concrete, valid request for a route (and the state it needs set up first)."""
    sid, ih = world.studies[private], world.infohash[private]
    spare = world.key_ids["spare"]
    if path == "/web/{name:path}":
        return "/web/app.js", {}
    if path == "/docs/assets/{name}":
        return "/docs/assets/swagger-ui.css", {}
    if path == "/api/v1/geometry/h3":
        return path, {"json": {"cells": []}}
    if path == "/api/v1/studies" and method == "POST":
        return path, {"json": {"name": f"new {secrets.token_hex(6)}"}}
    if path == "/api/v1/torrents" and method == "POST":
        return path, {"json": {"study_id": sid, "infohash": secrets.token_hex(20)}}
    if path == "/api/v1/torrents/{infohash}":
        if method == "DELETE":  # a torrent of its own to delete, made afresh each time
            ih = secrets.token_hex(20)
            with world.db.session() as s:
                registry.register_torrent(s, sid, registry.parse_infohash(ih))
        return f"/api/v1/torrents/{ih}", {"params": {"study_id": sid}}
    if path.endswith("/grants") and method == "POST":
        return f"/api/v1/studies/{sid}/grants", {"json": {"api_key_id": spare, "role": "read"}}
    if path.endswith("/grants/{api_key_id}"):
        with world.db.session() as s:
            if s.get(StudyGrant, (sid, spare)) is None:
                access.grant(s, registry.get_study(s, sid), spare, "read")
        return f"/api/v1/studies/{sid}/grants/{spare}", {}
    if path.endswith("/video.mp4"):
        _with_a_frame(world, sid)  # a video needs a published frame to draw
    return path.replace("{study_id}", str(sid)), {}


_FRAMED: set[int] = set()


def _with_a_frame(world: World, sid: int) -> None:
    from tests.web_browser import KnownStudy, add_frame

    if sid in _FRAMED:
        return
    with world.db.session() as s:
        title_id = registry.get_study(s, sid).titles[0].id
    add_frame(world.db, KnownStudy(sid, title_id), frame=0, city=0, peers=12)
    _FRAMED.add(sid)


def _routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, routers included (FastAPI >= 0.163
    keeps an included router as one entry whose effective routes carry the full path)."""
    found = set()
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        entries = contexts() if contexts is not None else [route]
        for entry in entries:
            for method in getattr(entry, "methods", None) or ():
                if method != "HEAD":
                    found.add((method, entry.path))
    return found


def test_every_route_has_a_rule(world: World) -> None:
    served = _routes(world.app)
    assert served - set(RULES) == set(), "routes without an access rule in RULES"
    assert set(RULES) - served == set(), "rules for routes the app no longer has"


CASES = [
    pytest.param(route, role, private, id=f"{route[0]} {route[1]} {role} {kind}")
    for route, rule in sorted(RULES.items())
    for role in ROLES
    for private, kind in ((False, "public"), (True, "private"))
    # Routes about no one study are asked once per role.
    if private is False or rule in ("read", "write", "owner")
]


@pytest.mark.parametrize(("route", "role", "private"), CASES)
def test_route_for_role(world: World, route: tuple[str, str], role: str, private: bool) -> None:
    method, path = route
    rule = RULES[route]
    url, kwargs = _request(world, method, path, private)
    headers = {"Authorization": f"Bearer {world.keys[role]}"} if role != "anonymous" else {}
    response = world.client.request(method, url, headers=headers, **kwargs)
    want = expected(rule, role, private) or OK[method]
    assert response.status_code == want, (response.status_code, response.text[:300])
    if want >= 400:
        assert "detail" in response.json()
        if private and want == 404:
            assert "private" not in response.text  # nothing says it exists


@pytest.mark.parametrize("role", ROLES)
def test_lists_show_a_private_study_only_to_who_may_read_it(world: World, role: str) -> None:
    headers = {"Authorization": f"Bearer {world.keys[role]}"} if role != "anonymous" else {}
    may_read = RANK[role] >= NEED["read"]
    studies = world.client.get("/api/v1/studies", params={"limit": 500}, headers=headers).json()
    ids = {s["id"] for s in studies["items"]}
    assert world.studies[False] in ids
    assert (world.studies[True] in ids) == may_read
    torrents = world.client.get("/api/v1/torrents", params={"limit": 500}, headers=headers)
    hashes = {t["infohash"] for t in torrents.json()["items"]}
    assert world.infohash[False] in hashes
    assert (world.infohash[True] in hashes) == may_read


def test_grants_take_effect_and_are_taken_back(world: World) -> None:
    sid = world.studies[True]
    other = {"Authorization": f"Bearer {world.keys['other']}"}
    owner = {"Authorization": f"Bearer {world.keys['owner']}"}
    assert world.client.get(f"/api/v1/studies/{sid}", headers=other).status_code == 404
    me = world.client.get("/api/v1/keys/me", headers=other).json()
    assert me["id"] == world.key_ids["other"] and me["admin"] is False
    grant = {"api_key_id": me["id"], "role": "write"}
    r = world.client.post(f"/api/v1/studies/{sid}/grants", json=grant, headers=owner)
    assert r.status_code == 201, r.text
    assert world.client.get(f"/api/v1/studies/{sid}", headers=other).status_code == 200
    listed = world.client.get(f"/api/v1/studies/{sid}/grants", headers=owner).json()
    assert {g["api_key_id"]: g["role"] for g in listed}[me["id"]] == "write"
    r = world.client.delete(f"/api/v1/studies/{sid}/grants/{me['id']}", headers=owner)
    assert r.status_code == 204
    assert world.client.get(f"/api/v1/studies/{sid}", headers=other).status_code == 404
    # Bad grants are 422s that say why; an unknown grant to remove is a 404.
    for body in ({"api_key_id": 9999, "role": "read"}, {"api_key_id": me["id"], "role": "own"}):
        r = world.client.post(f"/api/v1/studies/{sid}/grants", json=body, headers=owner)
        assert r.status_code == 422 and "detail" in r.json()
    r = world.client.delete(f"/api/v1/studies/{sid}/grants/{me['id']}", headers=owner)
    assert r.status_code == 404


def test_a_study_belongs_to_the_key_that_created_it(world: World) -> None:
    other = {"Authorization": f"Bearer {world.keys['other']}"}
    owner = {"Authorization": f"Bearer {world.keys['owner']}"}
    r = world.client.post("/api/v1/studies", json={"name": "mine", "private": True}, headers=other)
    assert r.status_code == 201
    sid = r.json()["id"]
    ih = secrets.token_hex(20)
    body = {"study_id": sid, "infohash": ih}
    assert world.client.post("/api/v1/torrents", json=body, headers=other).status_code == 201
    # The first owner is "another key" here: it cannot see, add to or delete from it.
    assert world.client.get(f"/api/v1/studies/{sid}/summary", headers=owner).status_code == 404
    assert world.client.post("/api/v1/torrents", json=body, headers=owner).status_code == 404
    r = world.client.delete(f"/api/v1/torrents/{ih}", headers=owner)
    assert r.status_code == 404
    with world.db.session() as s:
        assert s.query(Torrent).filter_by(study_id=sid).count() == 1


def test_a_revoked_key_is_refused_everywhere(world: World) -> None:
    with world.db.session() as s:
        key = create_api_key(s, "soon revoked")
        row = verify_api_key(s, key)
        assert row is not None
        access.grant(s, registry.get_study(s, world.studies[True]), row.id, "write")
        revoke_api_key(s, row.id)
    headers = {"Authorization": f"Bearer {key}"}
    sid = world.studies[True]
    for method, url in [
        ("GET", f"/api/v1/studies/{sid}"),
        ("GET", f"/api/v1/studies/{sid}/summary"),
        ("GET", "/api/v1/keys/me"),
        ("POST", "/api/v1/studies"),
    ]:
        r = world.client.request(method, url, headers=headers, json={"name": "x"})
        assert r.status_code == 403, (url, r.text)


@pytest.mark.parametrize("role", ["owner", "reader", "anonymous"])
def test_an_analysis_request_decides_the_role_once(
    world: World, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # readable_study and exact_reader share one dependency: role_of is asked once, and the
    # answer still tells an owner's exact read from everyone else's perturbed one.
    from swarmwatch.api import deps

    calls: list[int] = []
    real = deps.role_of

    def counted(*args: Any) -> access.Role:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(deps, "role_of", counted)
    headers = {"Authorization": f"Bearer {world.keys[role]}"} if role != "anonymous" else {}
    r = world.client.get(f"/api/v1/studies/{world.studies[False]}/summary", headers=headers)
    assert r.status_code == 200, r.text
    assert len(calls) == 1
    exact = r.json()["method"]["suppression"].startswith("none")
    assert exact == (RANK[role] >= NEED["owner"])
