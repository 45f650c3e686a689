"""Which MaxMind-format databases to read: configured, else installed, else embedded.

The one place that decides; the pipeline, the simulated swarm and the demo ask here.
"""

from __future__ import annotations

from pathlib import Path

from swarmwatch.config import Settings, get_settings

#: File names under settings.geoip_dir that `swarmwatch geoip install` swaps in.
INSTALLED_NAMES = {"city": "city.mmdb", "asn": "asn.mmdb"}


def embedded_city_db() -> Path:
    """The 2018 GeoLite2 City shipped by maxminddb-geolite2 (CC BY-SA 3.0). Stale."""
    from _maxminddb_geolite2 import geolite2_database

    return Path(geolite2_database())


def installed_path(settings: Settings | None = None, kind: str = "city") -> Path:
    settings = settings or get_settings()
    return Path(settings.geoip_dir) / INSTALLED_NAMES[kind]


def city_db_path(settings: Settings | None = None) -> Path:
    """SWARMWATCH_GEOIP_CITY, else the installed database, else the embedded 2018 one."""
    settings = settings or get_settings()
    if settings.geoip_city:
        return Path(settings.geoip_city)
    installed = installed_path(settings, "city")
    return installed if installed.is_file() else embedded_city_db()


def asn_db_path(settings: Settings | None = None) -> Path | None:
    """SWARMWATCH_GEOIP_ASN, else the installed ASN database, else none (it is optional)."""
    settings = settings or get_settings()
    if settings.geoip_asn:
        return Path(settings.geoip_asn)
    installed = installed_path(settings, "asn")
    return installed if installed.is_file() else None


def is_embedded(path: Path) -> bool:
    return path == embedded_city_db()


__all__ = [
    "INSTALLED_NAMES",
    "asn_db_path",
    "city_db_path",
    "embedded_city_db",
    "installed_path",
    "is_embedded",
]
