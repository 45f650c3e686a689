"""The torrent registry over a real uvicorn server: register, list, get, delete, refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from swarmwatch.store import Database
from swarmwatch.store.models import Torrent, Tracker
from tests.torrent_files import make_torrent

IH = "0123456789abcdef0123456789abcdef01234567"
MAGNET = (
    f"magnet:?xt=urn:btih:{IH}&dn=Episode&tr=http://127.0.0.1:6969/announce&tr=udp://127.0.0.1:6969"
)


def make_study(client: httpx.Client, name: str = "got-s07e01", **extra: Any) -> int:
    r = client.post("/api/v1/studies", json={"name": name, **extra})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def counts(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Torrent)) or 0,
            s.scalar(select(func.count()).select_from(Tracker)) or 0,
        )


def test_register_magnet_and_read_it_back(client: httpx.Client) -> None:
    sid = make_study(client, titles=["S07E01"])
    r = client.post("/api/v1/torrents", json={"study_id": sid, "magnet": MAGNET, "title": "S07E01"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["infohash"] == IH and body["name"] == "Episode"
    assert body["metadata_state"] == "pending" and body["title"] == "S07E01"
    assert [(t["url"], t["tier"]) for t in body["trackers"]] == [
        ("http://127.0.0.1:6969/announce", 0),
        ("udp://127.0.0.1:6969", 1),
    ]
    got = client.get(f"/api/v1/torrents/{IH.upper()}").json()
    assert got["infohash"] == IH and got["status"]["samples"] == 0
    listed = client.get("/api/v1/torrents", params={"study_id": sid}).json()
    assert listed["total"] == 1 and listed["items"][0]["infohash"] == IH


def test_register_by_infohash_forms(client: httpx.Client) -> None:
    import base64

    sid = make_study(client)
    v2 = "ab" * 32
    b32 = base64.b32encode(bytes.fromhex("11" * 20)).decode()
    for value, expect in [(IH, IH), (v2, v2), (b32, "11" * 20)]:
        r = client.post(
            "/api/v1/torrents",
            json={"study_id": sid, "infohash": value, "trackers": ["udp://127.0.0.1:1"]},
        )
        assert r.status_code == 201, r.text
        assert r.json()["infohash"] == expect
    assert client.get("/api/v1/torrents", params={"study_id": sid}).json()["total"] == 3


def test_upload_torrent_file(client: httpx.Client, tmp_path: Path) -> None:
    sid = make_study(client)
    data = make_torrent(tmp_path / "payload", trackers=("http://127.0.0.1:1/announce",))
    r = client.post(
        "/api/v1/torrents",
        data={"study_id": str(sid), "title": "E1", "trackers": ["udp://127.0.0.1:2"]},
        files={"file": ("e.torrent", data, "application/x-bittorrent")},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "episode.mkv" and body["size"] == 100_000
    assert body["metadata_state"] == "complete"
    assert body["infohash_v1"] and body["infohash_v2"]  # libtorrent 2 makes hybrids
    assert [(t["url"], t["tier"]) for t in body["trackers"]] == [
        ("http://127.0.0.1:1/announce", 0),
        ("udp://127.0.0.1:2", 1),
    ]


def test_delete(client: httpx.Client, db: Database) -> None:
    sid = make_study(client)
    assert (
        client.post("/api/v1/torrents", json={"study_id": sid, "magnet": MAGNET}).status_code == 201
    )
    r = client.delete(f"/api/v1/torrents/{IH}")
    assert r.status_code == 204
    assert client.get(f"/api/v1/torrents/{IH}").status_code == 404
    assert counts(db) == (0, 0)
    assert client.delete(f"/api/v1/torrents/{IH}").status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"magnet": "magnet:?xt=urn:btih:nothex"}, 422, "magnet"),
        ({"magnet": "http://example.org/x.torrent"}, 422, "magnet:?"),
        ({"infohash": "abc"}, 422, "40 hex"),
        ({"infohash": "g" * 40}, 422, "40 hex"),
        ({"infohash": IH, "magnet": MAGNET}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"infohash": IH, "trackers": ["ftp://127.0.0.1/x"]}, 422, "tracker URL"),
        ({"infohash": IH, "surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_registrations_are_refused_and_change_nothing(
    client: httpx.Client, db: Database, payload: dict[str, Any], status: int, fragment: str
) -> None:
    sid = make_study(client)
    assert (
        client.post("/api/v1/torrents", json={"study_id": sid, "magnet": MAGNET}).status_code == 201
    )
    before = counts(db)
    r = client.post("/api/v1/torrents", json={"study_id": sid, **payload})
    assert r.status_code == status, r.text
    assert fragment in str(r.json()["detail"])
    assert counts(db) == before


def test_bad_torrent_files(client: httpx.Client, db: Database, tmp_path: Path) -> None:
    sid = make_study(client)
    good = make_torrent(tmp_path / "p")
    cases = [
        b"this is not bencode",
        good[: len(good) // 2],
        b"d4:infoi3ee",
        b"l" * 5000 + b"e" * 5000,
    ]
    for data in cases:
        r = client.post(
            "/api/v1/torrents",
            data={"study_id": str(sid)},
            files={"file": ("x.torrent", data, "application/x-bittorrent")},
        )
        assert r.status_code == 422, r.text
        assert "torrent" in r.json()["detail"]
    assert counts(db) == (0, 0)


def test_upload_over_limit_is_413(client: httpx.Client, db: Database) -> None:
    sid = make_study(client)
    big = b"x" * (5 * 1024 * 1024)
    r = client.post(
        "/api/v1/torrents",
        data={"study_id": str(sid)},
        files={"file": ("big.torrent", big, "application/x-bittorrent")},
    )
    assert r.status_code == 413
    assert "detail" in r.json()
    assert counts(db) == (0, 0)


def test_unknown_study_and_duplicates(client: httpx.Client, db: Database) -> None:
    r = client.post("/api/v1/torrents", json={"study_id": 999, "magnet": MAGNET})
    assert r.status_code == 404 and "study 999" in r.json()["detail"]
    sid = make_study(client)
    assert (
        client.post("/api/v1/torrents", json={"study_id": sid, "magnet": MAGNET}).status_code == 201
    )
    before = counts(db)
    r = client.post("/api/v1/torrents", json={"study_id": sid, "infohash": IH, "title": "other"})
    assert r.status_code == 409
    assert IH in r.json()["detail"] and "Episode" in r.json()["detail"]
    assert counts(db) == before
    # The same swarm may be registered in another study.
    other = make_study(client, name="another study")
    assert (
        client.post("/api/v1/torrents", json={"study_id": other, "infohash": IH}).status_code == 201
    )
    assert client.get(f"/api/v1/torrents/{IH}").status_code == 409
    assert (
        client.get(f"/api/v1/torrents/{IH}", params={"study_id": other}).json()["study_id"] == other
    )
    assert client.post("/api/v1/studies", json={"name": "another study"}).status_code == 409


def test_auth(live_server: str, api_key: str) -> None:
    with httpx.Client(base_url=live_server) as anon:
        r = anon.post("/api/v1/studies", json={"name": "x"})
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
        r = anon.post(
            "/api/v1/studies", json={"name": "x"}, headers={"Authorization": "Bearer nope"}
        )
        assert r.status_code == 403
        r = anon.post("/api/v1/torrents", json={"study_id": 1, "infohash": IH})
        assert r.status_code == 401
        assert anon.get("/api/v1/studies").status_code == 200
    with httpx.Client(base_url=live_server, headers={"Authorization": f"Bearer {api_key}"}) as c:
        public = make_study(c, name="public")
        private = make_study(c, name="secret", private=True)
        assert (
            c.post("/api/v1/torrents", json={"study_id": private, "infohash": IH}).status_code
            == 201
        )
        assert c.get(f"/api/v1/studies/{private}").status_code == 200
    with httpx.Client(base_url=live_server) as anon:
        assert anon.get(f"/api/v1/studies/{public}").status_code == 200
        # A private study is unknown to whoever may not read it: its existence does not leak.
        assert anon.get(f"/api/v1/studies/{private}").status_code == 404
        assert [s["name"] for s in anon.get("/api/v1/studies").json()["items"]] == ["public"]
        assert anon.get(f"/api/v1/torrents/{IH}").status_code == 404
        assert anon.get("/api/v1/torrents", params={"study_id": private}).status_code == 404
        assert anon.delete(f"/api/v1/torrents/{IH}").status_code == 401


def test_pagination(client: httpx.Client) -> None:
    sid = make_study(client)
    for i in range(7):
        ih = f"{i:040x}"
        assert (
            client.post("/api/v1/torrents", json={"study_id": sid, "infohash": ih}).status_code
            == 201
        )
    page = client.get("/api/v1/torrents", params={"study_id": sid, "limit": 3, "offset": 3}).json()
    assert page["total"] == 7 and [t["infohash"] for t in page["items"]] == [
        f"{i:040x}" for i in (3, 4, 5)
    ]
    assert client.get("/api/v1/torrents", params={"limit": 0}).status_code == 422


def test_healthz(live_server: str) -> None:
    r = httpx.get(f"{live_server}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_metrics_are_prometheus_text_for_admin_keys_only(
    live_server: str, db: Database, api_key: str
) -> None:
    from swarmwatch.auth import create_api_key

    with db.session() as session:
        admin = create_api_key(session, "prometheus", admin=True)
    r = httpx.get(f"{live_server}/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "swarmwatch_pipeline_queue_depth" in r.text
    # Every study's exact figures, private ones too: nobody else reads them.
    assert httpx.get(f"{live_server}/metrics").status_code == 401
    other = httpx.get(f"{live_server}/metrics", headers={"Authorization": f"Bearer {api_key}"})
    assert other.status_code == 403 and "admin" in other.json()["detail"]


def test_write_rate_limit_is_429_json(db: Database, api_key: str) -> None:
    from swarmwatch.api import create_app
    from swarmwatch.config import Settings
    from tests.conftest import LiveServer

    settings = Settings(database_url=db.url, api_write_rate=0.01, api_write_burst=3)
    with (
        LiveServer(create_app(settings, db)) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}) as c,
    ):
        codes = [c.post("/api/v1/studies", json={"name": f"s{i}"}).status_code for i in range(5)]
        assert codes == [201, 201, 201, 429, 429]
        r = c.post("/api/v1/studies", json={"name": "late"})
        assert r.status_code == 429 and "retry" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/api/v1/studies").status_code == 200  # cheap reads are not limited
    with db.session() as s:
        from swarmwatch.store.models import Study

        assert s.scalar(select(func.count()).select_from(Study)) == 3


def test_concurrent_registrations_never_500(
    client: httpx.Client, live_server: str, api_key: str
) -> None:
    """The same new title and infohash registered at once: one 201, the rest 409."""
    from concurrent.futures import ThreadPoolExecutor

    sid = make_study(client)
    headers = {"Authorization": f"Bearer {api_key}"}

    def register(i: int) -> int:
        body = {"study_id": sid, "infohash": IH, "title": "race"}
        return httpx.post(
            f"{live_server}/api/v1/torrents", json=body, headers=headers, timeout=60
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(register, range(32)))
    assert sorted(set(codes)) == [201, 409], codes
    assert codes.count(201) == 1

    def new_title(i: int) -> int:
        body = {"study_id": sid, "infohash": f"{i + 1:040x}", "title": "fresh title"}
        return httpx.post(
            f"{live_server}/api/v1/torrents", json=body, headers=headers, timeout=60
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(new_title, range(32))) == {201}
    titles = client.get(f"/api/v1/studies/{sid}").json()["titles"]
    assert sorted(t["name"] for t in titles) == ["fresh title", "race"]
