"""The open simulated population the demo runs on: people keep arriving on a daily curve
and leave, so the map and the ranking keep changing for as long as the demo runs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geoip2.database
import pytest

from swarmwatch.demo import DEFAULT_PEERS, DEFAULT_SPEED, MAX_STAY, MEAN_STAY
from swarmwatch.sim import ArrivingSwarm, CompressedClock, ManualClock, build_index
from swarmwatch.sim.networks import CityNetworkIndex
from tests.test_sim_citydb import write_city_db

IH = ["aa" * 20, "bb" * 20]
START = datetime(2017, 8, 21, tzinfo=UTC)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> CityNetworkIndex:
    return build_index(write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb"))


def make(index: CityNetworkIndex, clock: object, **kw: object) -> ArrivingSwarm:
    opts: dict[str, object] = {
        "seed": 5,
        "arrivals_per_day": DEFAULT_PEERS,
        "torrents": IH,
        "start": START,
        "mean_stay": MEAN_STAY,
        "max_stay": MAX_STAY,
        "country_propensity": {},
    }
    opts.update(kw)
    return ArrivingSwarm(index=index, clock=clock, **opts)  # type: ignore[arg-type]


def test_the_demo_keeps_moving_for_ten_wall_minutes(index: CityNetworkIndex) -> None:
    """The demo's settings under its compressed clock, with the wall clock injected:
    every wall minute for ten minutes brings new people, and the hourly picture (peers
    per city, the city ranking) keeps changing; the old demo froze after a minute."""
    wall = [0.0]
    clock = CompressedClock(start=START, factor=DEFAULT_SPEED, monotonic=lambda: wall[0])
    swarm = make(index, clock)
    seen: set[int] = set()
    new_per_minute: list[int] = []
    pictures: list[Counter[int]] = []
    for minute in range(10):
        fresh = 0
        for step in range(6):  # every 10 wall seconds: the map's hourly-ish refresh
            wall[0] = minute * 60 + step * 10
            active = [p for ih in IH for p in swarm.active_peers(ih)]
            fresh += len({p.index for p in active} - seen)
            seen |= {p.index for p in active}
            pictures.append(Counter(p.geoname_id for p in active))
        new_per_minute.append(fresh)
    # A simulated day per wall minute, DEFAULT_PEERS arrivals a day (Poisson, thinned):
    # every minute, the tenth as much as the first, brings thousands of new peers.
    assert all(n > DEFAULT_PEERS * 0.5 for n in new_per_minute), new_per_minute
    assert new_per_minute[-1] > 0.7 * new_per_minute[0]
    # The map changes between consecutive looks, and so does the ranking of cities.
    assert all(a != b for a, b in zip(pictures, pictures[1:], strict=False))
    rankings = [tuple(gid for gid, _ in c.most_common()) for c in pictures]
    assert len(set(rankings)) >= 5


def test_arrivals_follow_the_local_evening(index: CityNetworkIndex) -> None:
    clock = ManualClock(START)
    swarm = make(index, clock, arrivals_per_day=50_000)
    tokyo, new_york = 1850147, 5128581
    by_utc_hour: dict[int, Counter[int]] = {h: Counter() for h in range(24)}
    for b in range(swarm.bucket_of(START + timedelta(days=3))):
        for p in swarm.arrivals(b):
            by_utc_hour[p.joined_at.hour][p.geoname_id] += 1
    # Peak at 21:00 local, trough at 09:00: Tokyo is UTC+9, New York UTC-4 in August.
    assert by_utc_hour[12][tokyo] > 3 * by_utc_hour[0][tokyo]
    assert by_utc_hour[1][new_york] > 3 * by_utc_hour[13][new_york]


def test_people_leave_and_arrivals_are_reproducible(index: CityNetworkIndex) -> None:
    clock = ManualClock(START)
    a, b = make(index, clock), make(index, clock)
    late = START + timedelta(days=4, hours=5)
    # Asked in any order, the same moment has the same people.
    first = [(p.index, p.ip, p.port) for p in a.active_peers(IH[0], late)]
    a.active_peers(IH[0], START + timedelta(hours=1))
    assert [(p.index, p.ip, p.port) for p in a.active_peers(IH[0], late)] == first
    assert [(p.index, p.ip, p.port) for p in b.active_peers(IH[0], late)] == first
    # Nobody in the swarm at `late` arrived more than max_stay before it, or has left.
    for p in a.active_peers(IH[0], late):
        assert late - timedelta(seconds=MAX_STAY) <= p.joined_at <= late
        assert p.left_at is not None and late < p.left_at
    # Memory holds about a day of arrivals, not the whole run.
    assert len(a._buckets) <= MAX_STAY / a.bucket + 5


def test_arrivals_geolocate_to_their_city(index: CityNetworkIndex, tmp_path: Path) -> None:
    db = write_city_db(tmp_path / "city.mmdb")
    swarm = make(index, ManualClock(START))
    peers = [p for b in range(8) for p in swarm.arrivals(b)]
    assert peers
    with geoip2.database.Reader(str(db)) as reader:
        for p in peers:
            assert p.ip.is_global
            assert reader.city(str(p.ip)).city.geoname_id == p.geoname_id


def test_bad_parameters_are_refused(index: CityNetworkIndex) -> None:
    with pytest.raises(ValueError):
        make(index, ManualClock(START), arrivals_per_day=0)
    with pytest.raises(ValueError):
        make(index, ManualClock(START), torrents=[])
