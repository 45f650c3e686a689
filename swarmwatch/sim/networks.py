"""Which address blocks a GeoIP City database places in each city: the sim's address book.

Built once by walking every network of the database (about a minute for the
3.4 M-network GeoLite2 City) and cached on disk keyed by the file's identity,
so later runs load it in well under a second.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Blocks kept per city and family: enough variety, and keeps the cache small (~10 MB).
MAX_NETWORKS_PER_CITY = 8
#: Bumped whenever the cache layout changes.
INDEX_FORMAT = 1

# IPv6 regions a MaxMind tree aliases onto its IPv4 subtree (6to4, Teredo) or that
# are not global unicast: an address there would not geolocate as drawn.
_V6_GLOBAL = ipaddress.IPv6Network("2000::/3")
_V6_ALIASES = (ipaddress.IPv6Network("2001::/32"), ipaddress.IPv6Network("2002::/16"))


@dataclass(slots=True)
class CityNetworks:
    """The blocks one city owns in the database, and what the database says of it."""

    geoname_id: int
    country: str | None
    time_zone: str | None
    v4: list[tuple[int, int]] = field(default_factory=list)  # (network address, prefix length)
    v6: list[tuple[int, int]] = field(default_factory=list)
    seen_v4: int = 0  # blocks seen in all, for reservoir sampling
    seen_v6: int = 0


@dataclass(slots=True)
class CityNetworkIndex:
    """geoname_id -> CityNetworks for one City database."""

    source: str
    cities: dict[int, CityNetworks]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "source": self.source,
            "cities": [
                [c.geoname_id, c.country, c.time_zone, c.v4, [[str(a), p] for a, p in c.v6]]
                for c in self.cities.values()
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CityNetworkIndex:
        if data.get("format") != INDEX_FORMAT:
            raise ValueError("index cache has another format")
        cities: dict[int, CityNetworks] = {}
        for gid, cc, tz, v4, v6 in data["cities"]:
            cities[gid] = CityNetworks(
                gid, cc, tz, [(a, p) for a, p in v4], [(int(a), p) for a, p in v6]
            )
        return cls(source=data["source"], cities=cities)


def _usable(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if isinstance(net, ipaddress.IPv6Network):
        if not net.subnet_of(_V6_GLOBAL) or any(net.subnet_of(a) for a in _V6_ALIASES):
            return False
    # A /32 or /128 has no host to spare besides the one address; that is fine,
    # but a network that is not globally routable is never a plausible peer.
    return net.network_address.is_global and not net.network_address.is_multicast


def build_index(
    db_path: Path,
    *,
    seed: int = 0,
    keep: set[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CityNetworkIndex:
    """Walk every network of the database; keep a reservoir of blocks per city.

    keep, when given, limits the index to those geoname ids (the sim only draws
    cities GeoNames knows a population for: a third of the file, a third of the load time).
    """
    import maxminddb

    rng = random.Random(seed)
    cities: dict[int, CityNetworks] = {}
    with maxminddb.open_database(str(db_path)) as reader:
        for n, (net, rec) in enumerate(reader):
            if progress is not None and n % 100_000 == 0:
                progress(n)
            if not isinstance(rec, dict):
                continue
            city = rec.get("city")
            if not isinstance(city, dict) or not isinstance(city.get("geoname_id"), int):
                continue
            gid = city["geoname_id"]
            if keep is not None and gid not in keep:
                continue
            entry = cities.get(gid)
            if entry is None:
                country = rec.get("country", {}).get("iso_code")
                tz = rec.get("location", {}).get("time_zone")
                entry = cities[gid] = CityNetworks(gid, country, tz)
            if net.version == 4:
                entry.seen_v4 += 1
                pool, seen = entry.v4, entry.seen_v4
            else:
                entry.seen_v6 += 1
                pool, seen = entry.v6, entry.seen_v6
            # Algorithm R keeps every block of the city equally likely; the (slow)
            # usability check runs only for the few blocks that would be kept.
            slot = len(pool) if len(pool) < MAX_NETWORKS_PER_CITY else rng.randrange(seen)
            if slot < MAX_NETWORKS_PER_CITY and _usable(net):
                block = (int(net.network_address), net.prefixlen)
                if slot == len(pool):
                    pool.append(block)
                else:
                    pool[slot] = block
    return CityNetworkIndex(source=str(db_path), cities=cities)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarmwatch"


def _cache_key(db_path: Path) -> str:
    st = db_path.stat()
    ident = f"{db_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{INDEX_FORMAT}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def load_index(
    db_path: Path,
    *,
    cache_dir: Path | None = None,
    keep: set[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CityNetworkIndex:
    """The index for db_path: from the cache when the file is unchanged, else built and cached."""
    cache_dir = cache_dir or default_cache_dir()
    subset = "all" if keep is None else hashlib.sha256(repr(sorted(keep)).encode()).hexdigest()[:8]
    cache = cache_dir / f"city-networks-{_cache_key(db_path)}-{subset}.json.gz"
    if cache.exists():
        try:
            with gzip.open(cache, "rt", encoding="utf-8") as f:
                return CityNetworkIndex.from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("network index cache %s unreadable; rebuilding", cache)
    log.info("building the city network index of %s (once per database file)", db_path)
    index = build_index(db_path, keep=keep, progress=progress)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(index.to_json(), f)
        tmp.replace(cache)
    except OSError:
        log.warning("could not write the network index cache under %s", cache_dir)
    return index


__all__ = [
    "MAX_NETWORKS_PER_CITY",
    "CityNetworkIndex",
    "CityNetworks",
    "build_index",
    "default_cache_dir",
    "load_index",
]
