"""A small deterministic City database (mmdb-writer) for sim and tracker tests.

Five real GeoNames cities, each owning a few public IPv4 and IPv6 blocks.
"""

from __future__ import annotations

from pathlib import Path

# geoname_id, country, time zone, IPv4 blocks, IPv6 blocks (data only: never destinations)
CITIES: list[tuple[int, str, str, list[str], list[str]]] = [
    (2643743, "GB", "Europe/London", ["81.2.69.0/24", "86.128.0.0/16"], ["2a02:c7f::/32"]),
    (5128581, "US", "America/New_York", ["24.0.0.0/16", "68.160.0.0/14"], ["2600:1000::/28"]),
    (1850147, "JP", "Asia/Tokyo", ["126.0.0.0/12"], ["2400:4050::/32"]),
    (2147714, "AU", "Australia/Sydney", ["1.120.0.0/14"], ["2001:8003::/32"]),
    (3448439, "BR", "America/Sao_Paulo", ["177.0.0.0/14"], []),
]
#: A block with a country but no city: the sim must never draw from it.
CITYLESS = "45.0.0.0/16"


def write_city_db(path: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    for gid, cc, tz, v4, v6 in CITIES:
        record = {
            "city": {"geoname_id": gid, "names": {"en": str(gid)}},
            "country": {"iso_code": cc, "names": {"en": cc}},
            "location": {"time_zone": tz, "latitude": 0.0, "longitude": 0.0},
        }
        writer.insert_network(IPSet(v4 + v6), record)
    writer.insert_network(IPSet([CITYLESS]), {"country": {"iso_code": "US"}})
    writer.to_db_file(str(path))
    return path


def test_fixture_database_geolocates_as_declared(tmp_path: Path) -> None:
    import geoip2.database
    import geoip2.errors
    import pytest

    db = write_city_db(tmp_path / "city.mmdb")
    with geoip2.database.Reader(str(db)) as reader:
        for gid, cc, _tz, v4, v6 in CITIES:
            for block in v4 + v6:
                first = block.split("/")[0]
                answer = reader.city(first)
                assert answer.city.geoname_id == gid
                assert answer.country.iso_code == cc
        assert reader.city(CITYLESS.split("/")[0]).city.geoname_id is None
        with pytest.raises(geoip2.errors.AddressNotFoundError):
            reader.city("8.8.8.8")
