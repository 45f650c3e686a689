"""Test data for the pipeline tests: a real MaxMind-format City database and a registry.

The City database is written with mmdb-writer and holds MaxMind's published test
answers (GeoIP2-City-Test.mmdb: 81.2.69.160 → London 2643743, ...) plus a few
deliberately broken records, so it works offline and in CI.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netaddr import IPSet

from swarmwatch.store import Database
from swarmwatch.store.models import Study, Title, Torrent


@dataclass(frozen=True)
class Known:
    address: str
    country: str | None
    geoname_id: int | None
    anomaly: str | None


def _city(geoname_id: int, name: str, iso: str, lat: float, lon: float) -> dict[str, Any]:
    return {
        "city": {"geoname_id": geoname_id, "names": {"en": name}},
        "country": {"iso_code": iso, "names": {"en": iso}},
        "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 100},
    }


NETWORKS: list[tuple[str, dict[str, Any]]] = [
    # MaxMind's GeoIP2-City-Test answers (TESTBED.md).
    ("81.2.69.160/27", _city(2643743, "London", "GB", 51.5142, -0.0931)),
    ("89.160.20.112/28", _city(2694762, "Linköping", "SE", 58.4167, 15.6167)),
    ("216.160.83.56/29", _city(5803556, "Milton", "US", 47.2513, -122.3149)),
    ("175.16.199.0/24", _city(2038180, "Changchun", "CN", 43.88, 125.3228)),
    (
        "67.43.156.0/24",
        {"country": {"iso_code": "BT"}, "location": {"latitude": 27.5, "longitude": 90.5}},
    ),
    ("2001:218::/32", {"country": {"iso_code": "JP"}}),
    # Our own: an IPv6 city, broken data, and records over special ranges.
    ("2a02:8108::/32", _city(2950159, "Berlin", "DE", 52.52437, 13.41053)),
    ("5.5.5.0/24", _city(2643743, "London", "GB", 0.0, 0.0)),  # null island
    ("100.0.0.0/8", _city(5128581, "New York City", "US", 40.71427, -74.00597)),
    ("192.168.0.0/16", _city(2643743, "London", "GB", 51.5142, -0.0931)),
    # Big networks (one record, many addresses) for the per-network cache.
    ("24.0.0.0/12", _city(4684888, "Dallas", "US", 32.78306, -96.80667)),
    ("1.128.0.0/11", _city(2174003, "Brisbane", "AU", -27.46794, 153.02809)),
]

KNOWN = [
    Known("81.2.69.160", "GB", 2643743, None),
    Known("89.160.20.112", "SE", 2694762, None),
    Known("216.160.83.56", "US", 5803556, None),
    Known("175.16.199.0", "CN", 2038180, None),
    Known("67.43.156.0", "BT", None, "no_city"),
    Known("2001:218::1", "JP", None, "no_city"),
    Known("2a02:8108::42", "DE", 2950159, None),
    Known("5.5.5.5", "GB", None, "null_island"),
    Known("8.8.8.8", None, None, "not_found"),
    Known("127.0.0.5", None, None, "loopback"),
    Known("::1", None, None, "loopback"),
    Known("10.1.2.3", None, None, "private"),
    Known("192.168.1.1", None, None, "private"),
    Known("100.64.1.1", None, None, "private"),
    Known("100.1.2.3", "US", 5128581, None),
    Known("224.0.0.251", None, None, "multicast"),
    Known("ff02::1", None, None, "multicast"),
    Known("192.0.2.7", None, None, "reserved"),
    Known("2001:db8::7", None, None, "reserved"),
    Known("fd00::1", None, None, "private"),
    Known("::ffff:81.2.69.161", "GB", 2643743, None),
]


def write_city_db(path: Path, database_type: str = "GeoIP2-City") -> Path:
    from mmdb_writer import MMDBWriter

    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": "swarmwatch test City database (MaxMind test answers)"},
    )
    for cidr, record in NETWORKS:
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


def write_asn_db(path: Path) -> Path:
    from mmdb_writer import MMDBWriter

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {"autonomous_system_number": 20712, "autonomous_system_organization": "Andrews & Arnold"},
    )
    writer.to_db_file(str(path))
    return path


INFOHASH = "0123456789abcdef0123456789abcdef01234567"
INFOHASH_B = "89abcdef0123456789abcdef0123456789abcdef"


def register(db: Database, *studies: tuple[str, list[str]]) -> dict[tuple[str, str], int]:
    """Create studies with one title each holding torrents; returns (study, infohash) -> id."""
    ids: dict[tuple[str, str], int] = {}
    with db.session() as session:
        for name, infohashes in studies:
            study = Study(name=name)
            session.add(study)
            session.flush()
            title = Title(study_id=study.id, name=f"{name} episode")
            session.add(title)
            session.flush()
            for ih in infohashes:
                torrent = Torrent(study_id=study.id, title_id=title.id, infohash_v1=ih)
                session.add(torrent)
                session.flush()
                ids[(name, ih)] = torrent.id
    return ids


T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)
