"""The attacker of issue 15, as the public: derivations that recover withheld counts.

Two halves. (1) The harness over synthetic studies with small cells: every
differencing derivation of the issue, run against a publisher. Against plain
k-suppression (today's rule) it recovers the withheld count every time, which
shows the harness can fail; against cell-key perturbation (swarmwatch.analysis.
cellkey) it never does with certainty beyond what the noise design allows, and
guesses exactly no more often than P(noise sum = 0) <= P(p = 0) = 1/4. (2) The
real API: what ownership already closes (a private study gives another key and
the anonymous nothing to combine), and the public-study subtractions of the issue,
which cell-key values published to everyone but the owners leave uncertain.
"""

from __future__ import annotations

import asyncio
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from swarmwatch import registry
from swarmwatch.analysis.cellkey import BOUND, DEFAULT_TABLE, RECORD_KEY_MODULUS
from swarmwatch.analysis.estimators import chao1
from swarmwatch.api import create_app
from swarmwatch.auth import create_api_key, verify_api_key
from swarmwatch.config import get_settings
from swarmwatch.pipeline import anonymise
from swarmwatch.pipeline.geolocate import Geolocator
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.sightings import PeerSighting, Source
from swarmwatch.store import Database, writer
from swarmwatch.store.models import Sample
from tests.conftest import LiveServer
from tests.pipeline_fixtures import T0, addr, write_city_db
from tests.test_pipeline_store import sighting

K = 5

# --- (1) the harness over synthetic studies ---------------------------------------------------


@dataclass(frozen=True)
class SimPeer:
    record_key: int
    title: str
    city: str
    vantage: str
    day: int
    times: int  # samples that saw it (Chao1's f1, f2)


Cell = Sequence[SimPeer]
#: A publisher answers one count: plain k-suppression, or cell-key perturbation.
Publisher = Callable[[Cell], int | None]


def plain(cell: Cell) -> int | None:
    return len(cell) if len(cell) >= K else None


def cellkey(cell: Cell) -> int | None:
    return DEFAULT_TABLE.publish(len(cell), sum(p.record_key for p in cell), K)


def sim_study(rng: random.Random) -> list[SimPeer]:
    """Big cells everywhere, and one small (withheld) cell per dimension."""

    def peer(title: str = "T1", city: str = "", vantage: str = "va", day: int = -1) -> SimPeer:
        return SimPeer(
            rng.randrange(RECORD_KEY_MODULUS),
            title,
            city or rng.choice(["London", "Paris", "Tokyo"]),
            vantage,
            day if day >= 0 else rng.randrange(4),
            rng.choice([1, 1, 3, 4]),
        )

    peers = [peer() for _ in range(rng.randint(30, 200))]
    peers += [peer(title="T2") for _ in range(rng.randint(1, K - 1))]
    peers += [peer(city="Reykjavik") for _ in range(rng.randint(1, K - 1))]
    peers += [peer(vantage="vb") for _ in range(rng.randint(1, K - 1))]
    peers += [peer(day=4) for _ in range(rng.randint(1, K - 1))]
    twice = [peer() for _ in range(rng.randint(1, K - 1))]
    return peers + [SimPeer(p.record_key, p.title, p.city, p.vantage, p.day, 2) for p in twice]


@dataclass(frozen=True)
class Attack:
    """What the attacker derives: estimate = published(whole) - sum(published(parts))."""

    target: Callable[[list[SimPeer]], Cell]
    whole: Callable[[list[SimPeer]], Cell]
    parts: Callable[[list[SimPeer]], list[Cell]]


def _where(test: Callable[[SimPeer], bool]) -> Callable[[list[SimPeer]], Cell]:
    return lambda peers: [p for p in peers if test(p)]


def _study_minus(field: str, target: object, *rest: object) -> Attack:
    """The whole study against a filter on `field` that leaves the target value out."""
    return Attack(
        _where(lambda p: getattr(p, field) == target),
        lambda peers: peers,
        lambda peers: [_where(lambda p: getattr(p, field) in rest)(peers)],
    )


ATTACKS = {
    # summary unique_peers against the rankings of every other city
    "total - cities": Attack(
        _where(lambda p: p.city == "Reykjavik"),
        lambda peers: peers,
        lambda peers: [[p for p in peers if p.city == c] for c in ("London", "Paris", "Tokyo")],
    ),
    # summary against summary?title=T1 (and the torrent status of T1's torrent)
    "study - title": _study_minus("title", "T2", "T1"),
    "study - vantage": _study_minus("vantage", "vb", "va"),
    # a whole study against a from/to window that leaves out the last day
    "study - window": _study_minus("day", 4, 0, 1, 2, 3),
    # a parent H3 cell (or a country) against its children (or cities)
    "parent - children": Attack(
        _where(lambda p: p.city == "Reykjavik"),
        _where(lambda p: p.city in ("Reykjavik", "London")),
        lambda peers: [_where(lambda p: p.city == "London")(peers)],
    ),
}


def run_attack(
    attack: Attack, peers: list[SimPeer], publisher: Publisher
) -> tuple[int | None, int]:
    """(the attacker's estimate or None, the truth); the target itself is withheld."""
    truth = len(attack.target(peers))
    assert publisher(attack.target(peers)) is None, "the target must be a withheld cell"
    whole = publisher(attack.whole(peers))
    parts = [publisher(c) for c in attack.parts(peers)]
    if whole is None or any(p is None for p in parts):
        return None, truth
    return whole - sum(p for p in parts if p is not None), truth


def feasible(estimate: int, terms: int) -> set[int]:
    """Withheld values (1..k-1) consistent with an estimate whose noise is bounded."""
    return {t for t in range(1, K) if abs(estimate - t) <= BOUND * terms}


RUNS = 1500


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_plain_suppression_falls_to_every_derivation(name: str) -> None:
    """The positive control: today's rule gives the withheld value, every time."""
    rng = random.Random(name)
    for _ in range(200):
        estimate, truth = run_attack(ATTACKS[name], sim_study(rng), plain)
        assert estimate == truth


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_cell_key_resists_every_derivation(name: str) -> None:
    attack = ATTACKS[name]
    rng = random.Random(name)
    exact = certain = tried = 0
    for _ in range(RUNS):
        peers = sim_study(rng)
        estimate, truth = run_attack(attack, peers, cellkey)
        if estimate is None:
            continue
        tried += 1
        exact += estimate == truth
        terms = 1 + len(attack.parts(peers))
        assert truth in feasible(estimate, terms)  # bounded noise: the truth stays in range
        certain += feasible(estimate, terms) == {truth}
    assert tried > RUNS * 0.9
    # Exact only when the noises cancel: P(sum = 0) <= max P(p) = 1/4 (plus 4 s.e.).
    assert exact / tried <= DEFAULT_TABLE.p_zero + 4 * (0.25 * 0.75 / tried) ** 0.5
    # Certain only when every noise is at its extreme: (1/16)^2 per pair, at most.
    assert certain / tried <= 2 * (1 / 16) ** 2 + 4 * ((1 / 128) / tried) ** 0.5


def test_repeating_or_rephrasing_a_query_cannot_average_the_noise() -> None:
    rng = random.Random(7)
    peers = sim_study(rng)
    city = [p for p in peers if p.city == "London"]
    answers = {cellkey(city) for _ in range(100)}
    rephrased = cellkey(sorted(city, key=lambda p: (p.day, p.record_key)))
    assert len(answers) == 1 and rephrased in answers


def test_chao1_withholds_an_estimate_that_would_give_f2_away() -> None:
    """The issue's Chao1 derivation: published S, f1 and the estimate gave f2 = 3."""
    from swarmwatch.analysis.cellkey import protected_chao1

    rng = random.Random(3)
    peers = sim_study(rng)
    f1 = [p for p in peers if p.times == 1]
    f2 = [p for p in peers if p.times == 2]
    assert 0 < len(f2) < K
    exact = chao1(len(peers), len(f1), len(f2))
    # Today's derivation: f2 from the estimate, f1 and S (solve unseen for f2).
    unseen = exact.estimate - exact.observed
    assert round(exact.f1 * (exact.f1 - 1) / (2 * unseen) - 1) == len(f2)
    assert protected_chao1(cellkey(peers), cellkey(f1), cellkey(f2)) is None


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_studies_publish_only_what_the_design_allows(seed: int) -> None:
    rng = random.Random(seed)
    peers = sim_study(rng)
    cells = [peers] + [[p for p in peers if p.city == c] for c in {p.city for p in peers}]
    cells += [[p for p in peers if p.title == t] for t in ("T1", "T2")]
    for cell in cells:
        value = cellkey(cell)
        assert value is None or value == 0 or value >= K
        if value is not None and len(cell):
            assert abs(value - len(cell)) <= BOUND
        assert cellkey(list(reversed(cell))) == value  # the same peers, the same answer
    for attack in ATTACKS.values():
        estimate, truth = run_attack(attack, peers, cellkey)
        if estimate is not None:
            assert abs(estimate - truth) <= BOUND * (1 + len(attack.parts(peers)))


# --- (2) the real API ------------------------------------------------------------------------

IH1, IH2 = "1" * 40, "2" * 40


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


def _study_with_a_small_title(db: Database, city_db: Path, *, private: bool) -> tuple[str, str]:
    """20 peers of T1 and 3 of T2 (k = 5): returns (owner key, other key)."""
    with db.session() as s:
        owner = create_api_key(s, "owner")
        other = create_api_key(s, "other")
        owner_row = verify_api_key(s, owner)
        assert owner_row is not None
        study = registry.create_study(
            s, "attacked", private=private, titles=["T1", "T2"], owner_key_id=owner_row.id
        )
        registry.register_torrent(s, study.id, registry.parse_infohash(IH1), title="T1")
        registry.register_torrent(s, study.id, registry.parse_infohash(IH2), title="T2")

    async def crawl() -> None:
        geo = Geolocator(city_db, workers=0)
        try:
            async with Pipeline(db, geolocator=geo, batch_size=50) as p:
                for i in range(20):
                    await p.put(sighting(f"81.2.69.{i + 1}", at=i, ih=IH1))
                for i in range(3):
                    await p.put(sighting(f"81.2.69.{i + 101}", at=i, ih=IH2))
        finally:
            geo.close()

    asyncio.run(crawl())
    return owner, other


def test_a_private_study_gives_the_public_nothing_to_combine(db: Database, city_db: Path) -> None:
    owner, other = _study_with_a_small_title(db, city_db, private=True)
    app = create_app(get_settings().model_copy(update={"api_answer_cache_seconds": 0}), db)
    reads = [
        "/api/v1/studies/1",
        "/api/v1/studies/1/summary",
        "/api/v1/studies/1/summary?title=T1",
        "/api/v1/studies/1/summary?vantage=v1",
        "/api/v1/studies/1/summary?from=2026-11-27&to=2026-11-27",
        "/api/v1/studies/1/rankings?level=country",
        "/api/v1/studies/1/rankings?level=city",
        *[f"/api/v1/studies/1/rankings?level=cell&res={r}" for r in (3, 4, 5, 6)],
        "/api/v1/studies/1/frames?res=4",
        "/api/v1/studies/1/cells.geojson",
        "/api/v1/studies/1/cities.geojson",
        "/api/v1/studies/1/rankings.csv",
        f"/api/v1/torrents/{IH1}",
        f"/api/v1/torrents/{IH2}",
        "/api/v1/torrents?study_id=1",
    ]
    with LiveServer(app) as server:
        for who in ({}, {"Authorization": f"Bearer {other}"}):
            with httpx.Client(base_url=server.url, headers=who, timeout=30) as c:
                for url in reads:
                    r = c.get(url)
                    assert r.status_code == 404, (url, r.status_code)
                    assert "81.2.69" not in r.text and "unique_peers" not in r.text
                listed = c.get("/api/v1/torrents").json()["items"]
                assert not {t["infohash"] for t in listed} & {IH1, IH2}
        with httpx.Client(base_url=server.url, timeout=30) as c:
            summary = c.get(
                "/api/v1/studies/1/summary", headers={"Authorization": f"Bearer {owner}"}
            )
            assert summary.status_code == 200 and summary.json()["unique_peers"] == 23


#: Public studies of the real-API attack, each with record keys from its own seed.
STUDIES = 16
DAY0, DAY1 = "2026-11-27", "2026-11-28"  # T0's UTC day (tests.pipeline_fixtures), the next


def _seeded_keys(seed: int) -> Callable[[int], array[int]]:
    rng = random.Random(seed)
    return lambda n: array("l", [rng.randrange(2**31) for _ in range(n)])


def _public_study(db: Database, city_db: Path, index: int) -> tuple[int, str, dict[str, int]]:
    """A public study with small cells: (id, T1's infohash, the withheld true counts).

    T1: 20 peers via vantage va on day 0, 2 via vb, 4 first seen the next day, 2 the
    GeoIP database cannot place; T2: 3 peers. Withheld (k = 5): T2, vantage vb, the
    second day, the unlocated.
    """
    ih1, ih2 = f"{2 * index + 1:040x}", f"{2 * index + 2:040x}"
    with db.session() as s:
        study = registry.create_study(s, f"public-{index}", private=False, titles=["T1", "T2"])
        registry.register_torrent(s, study.id, registry.parse_infohash(ih1), title="T1")
        registry.register_torrent(s, study.id, registry.parse_infohash(ih2), title="T2")
        study_id = study.id

    def seen(
        n: int, first: int, ih: str, vantage: str, day: int, net: str = "2a02:8108::"
    ) -> list[PeerSighting]:
        # Berlin in the test City database (a /32: room for every peer); 8.8.8.x is in
        # none of its networks. Data only: nothing is sent to these addresses.
        at = T0 + timedelta(days=day)
        return [
            PeerSighting(ih, addr(f"{net}{first + i}"), 51413, Source.TRACKER, vantage, at)
            for i in range(n)
        ]

    items = seen(20, 1, ih1, "va", 0) + seen(2, 30, ih1, "vb", 0) + seen(4, 40, ih1, "va", 1)
    items += seen(3, 101, ih2, "va", 0) + seen(2, 1, ih1, "va", 0, net="8.8.8.")  # not placed

    async def crawl() -> None:
        geo = Geolocator(city_db, workers=0)
        try:
            async with Pipeline(db, geolocator=geo, batch_size=50) as p:
                for item in items:
                    await p.put(item)
        finally:
            geo.close()

    asyncio.run(crawl())
    return study_id, ih1, {"title": 3, "vantage": 2, "window": 4, "located": 2}


def test_a_public_study_resists_differencing_through_the_api(
    db: Database, city_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15's derivations against the real API, as the public, over many studies.

    Each subtracts two published numbers to get a withheld one. With cell-key noise the
    truth stays possible, is certain only when both noises sit at an extreme, and the
    exact guess is right no more often than the noise design allows (the harness above
    measures those rates closely)."""
    studies = []
    for index in range(STUDIES):
        # Seeded study key and record keys: which peer gets which key is then fixed
        # too, and so is every answer (the run is reproducible, not a lucky draw).
        monkeypatch.setattr(writer, "draw_record_keys", _seeded_keys(index))
        study_key = random.Random(-index - 1).randbytes
        monkeypatch.setattr(anonymise, "secrets", SimpleNamespace(token_bytes=study_key))
        studies.append(_public_study(db, city_db, index))
    app = create_app(get_settings().model_copy(update={"api_answer_cache_seconds": 0}), db)
    exact = certain = tried = 0
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        for study_id, ih1, truth in studies:
            base = f"/api/v1/studies/{study_id}/summary"

            def peers(base: str = base, **params: str) -> int | None:
                answer = c.get(base, params=params).json()
                assert answer["method"]["exact"] is False
                value: int | None = answer["unique_peers"]
                return value

            whole = c.get(base).json()
            assert whole["by_title"]["T2"] is None  # withheld...
            assert whole["sightings_by_vantage"]["vb"] is None
            status = c.get(f"/api/v1/torrents/{ih1}").json()["status"]["unique_peers"]
            first_day = next(d for d in whole["daily"] if d["day"] == DAY0)

            def place(level: str, study_id: int = study_id, **params: object) -> list[int | None]:
                rows = c.get(
                    f"/api/v1/studies/{study_id}/rankings", params={"level": level, **params}
                ).json()["rows"]
                return [row["peers"] for row in rows] or [None]

            assert whole["unlocated"] is None
            derived = {
                # the total against its located places: the country, the city, the H3
                # cell at every resolution (all the located peers are in one of each)
                "located": place("country")
                + place("city")
                + [v for res in (3, 4, 5, 6) for v in place("cell", res=res)],
                "title": [peers(title="T1"), status],
                "vantage": [peers(vantage="va")],
                "window": [peers(**{"from": DAY0, "to": DAY1}), first_day["new_peers"]],
            }
            # Chao1 from protected inputs only: no f2 below k to solve for.
            estimate_block = whole["estimate"]
            assert (
                estimate_block is None
                or estimate_block["f2"] in (None, 0)
                or (estimate_block["f2"] >= K)
            )
            for name, parts in derived.items():
                for part in parts:
                    if whole["unique_peers"] is None or part is None:
                        continue
                    # ...and the attacker subtracts: two noises in the estimate.
                    estimate = whole["unique_peers"] - part
                    tried += 1
                    exact += estimate == truth[name]
                    assert truth[name] in feasible(estimate, 2), (name, estimate)
                    certain += len(feasible(estimate, 2)) == 1
    assert tried >= STUDIES * 8
    # P(two independent noises cancel) = sum p_i^2 = 44/256; plus 4 standard errors.
    p = sum(w * w for w in DEFAULT_TABLE.weights) / sum(DEFAULT_TABLE.weights) ** 2
    assert exact / tried <= p + 4 * (p * (1 - p) / tried) ** 0.5
    # Certain only when both noises sit at the same extreme: (1/16)^2 per derivation.
    q = (1 / 16) ** 2
    assert certain / tried <= q + 4 * (q * (1 - q) / tried) ** 0.5
    print(f"api derivations: {tried}, exact {exact}, certain {certain}")


def test_an_owners_exact_answer_is_never_served_to_the_public(db: Database, city_db: Path) -> None:
    """Answers are cached per credentials: the public never gets the owner's copy."""
    owner, other = _study_with_a_small_title(db, city_db, private=False)
    app = create_app(get_settings().model_copy(update={"api_answer_cache_seconds": 60}), db)
    url = "/api/v1/studies/1/summary"
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        mine = c.get(url, headers={"Authorization": f"Bearer {owner}"}).json()
        assert mine["method"]["exact"] is True and mine["by_title"] == {"T1": 20, "T2": 3}
        for who in ({}, {"Authorization": f"Bearer {other}"}):
            for _ in range(2):  # the second read could only come from a cache
                theirs = c.get(url, headers=who).json()
                assert theirs["method"]["exact"] is False
                assert theirs["by_title"]["T2"] is None
        status = c.get(f"/api/v1/torrents/{IH2}", headers={"Authorization": f"Bearer {owner}"})
        assert status.json()["status"]["unique_peers"] == 3
        assert c.get(f"/api/v1/torrents/{IH2}").json()["status"]["unique_peers"] is None


# --- numbers that count no peer rows: samples and anomaly reasons (issue 15, gap 3) ---------


def test_samples_and_anomaly_reasons_are_perturbed_for_the_public(db: Database) -> None:
    """What trackers and swarm rounds returned, and sightings by anomaly reason, are not
    peer rows: they were published raw (or k-suppressed only), so a swarm of 3 showed as 3.
    Now the public gets them withheld below k and perturbed by a fixed noise per number;
    owners read them exact and are told so; a tracker's own scrape is shown as given."""
    from swarmwatch.sightings import SampleRecord
    from swarmwatch.store.writer import BatchWriter, WriteBatch

    with db.session() as s:
        owner = create_api_key(s, "owner")
        row = verify_api_key(s, owner)
        assert row is not None
        study = registry.create_study(s, "samples", titles=["T1"], owner_key_id=row.id)
        torrent = registry.register_torrent(s, study.id, registry.parse_infohash(IH1))
        torrent_id, study_id = torrent.id, study.id
    truth = [3] + [5 + (7 * i) % 23 for i in range(1, 40)]  # the first: a sample of 3
    batch = WriteBatch()
    for i, n in enumerate(truth):
        at = T0 + timedelta(minutes=i)
        batch.samples.append((torrent_id, SampleRecord(IH1, Source.TRACKER, "va", at, at, n, 2, 1)))
    swarm_at = T0 + timedelta(hours=2)  # the latest: a swarm round with 3 seeds, 6 leechers
    batch.samples.append(
        (torrent_id, SampleRecord(IH1, Source.SWARM, "va", swarm_at, swarm_at, 9, 3, 6,
                                  known_peers=12))
    )  # fmt: skip
    for reason, count in (("private", 3), ("bogon", 12)):
        for i in range(count):
            batch.add_anomaly(torrent_id, study_id, "tracker", reason, T0 + timedelta(seconds=i))
    BatchWriter(db.engine).write(batch)
    everything = sum(truth) + 9

    app = create_app(get_settings().model_copy(update={"api_answer_cache_seconds": 0}), db)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        owners = {"Authorization": f"Bearer {owner}"}
        mine = c.get(f"/api/v1/torrents/{IH1}", headers=owners).json()["status"]
        assert mine["exact"] is True and mine["peers_returned"] == everything
        assert mine["round_sighted"] == 9 and mine["round_reachable"] == 12
        assert mine["last_samples"][0]["seeders"] == 3
        reasons = c.get(f"/api/v1/studies/{study_id}/summary", headers=owners).json()
        assert reasons["anomaly_sightings_by_reason"] == {"private": 3, "bogon": 12}

        public = c.get(f"/api/v1/torrents/{IH1}").json()["status"]
        assert public == c.get(f"/api/v1/torrents/{IH1}").json()["status"]  # fixed noise
        assert public["exact"] is False
        # A sample that adds nothing (a failed announce) draws no fresh noise for the
        # same total: otherwise watching failures come in would average the noise away.
        failed = WriteBatch()
        failed_at = T0 + timedelta(hours=3)
        failed.samples.append(
            (torrent_id, SampleRecord(IH1, Source.TRACKER, "va", failed_at, error="timeout"))
        )
        BatchWriter(db.engine).write(failed)
        again = c.get(f"/api/v1/torrents/{IH1}").json()["status"]
        assert again["samples"] == public["samples"] + 1
        assert again["peers_returned"] == public["peers_returned"]
        total = public["peers_returned"]
        assert total is not None and abs(total - everything) <= BOUND
        swarm = public["last_samples"][0]
        assert swarm["source"] == "swarm" and swarm["seeders"] is None  # 3 < k: withheld
        assert swarm["leechers"] is None or abs(swarm["leechers"] - 6) <= BOUND
        assert public["round_reachable"] is None or abs(public["round_reachable"] - 12) <= BOUND
        tracker = public["last_samples"][1]
        assert (tracker["seeders"], tracker["leechers"]) == (2, 1)  # the tracker's, as given
        summary = c.get(f"/api/v1/studies/{study_id}/summary").json()
        by_reason = summary["anomaly_sightings_by_reason"]
        assert by_reason["private"] is None
        assert by_reason["bogon"] is not None and abs(by_reason["bogon"] - 12) <= BOUND

    # Every sample's published value, as the API computes it: withheld below k, within
    # the bound otherwise, and exact about as often as the noise design allows (1/4).
    from swarmwatch.analysis.samplenoise import publication_key, publish_count

    with db.engine.connect() as conn:
        key = publication_key(conn)
        ids = [
            int(i)
            for (i,) in conn.execute(
                select(Sample.id).where(Sample.error.is_(None)).order_by(Sample.started_at)
            )
        ]
    shown = [publish_count(key, n, K, "sample", i) for n, i in zip(truth, ids, strict=False)]
    assert shown[0] is None  # the sample of 3
    visible = [(n, v) for n, v in zip(truth, shown, strict=False) if v is not None]
    assert all(abs(v - n) <= BOUND for n, v in visible)
    exact = sum(v == n for n, v in visible)
    assert exact < len(visible) / 2, (exact, len(visible))  # P(exact) = 1/4 per value
    # The withheld sample from the total less every other (all of them, though the API
    # lists only the last ten): each term is off by up to BOUND, so below k the truth
    # stays one of several values.
    swarm_shown = publish_count(key, 9, K, "sample", ids[-1])
    assert swarm_shown is not None
    derived = total - sum(v for v in shown[1:] if v is not None) - swarm_shown
    slack = BOUND * (len(visible) + 2)
    candidates = {c for c in range(1, K) if abs(derived - c) <= slack}
    assert truth[0] in candidates and len(candidates) > 1
