"""Which MaxMind-format databases to read: settings, or the embedded stale default."""

from __future__ import annotations

from pathlib import Path

from swarmwatch.config import Settings, get_settings


def embedded_city_db() -> Path:
    """The 2018 GeoLite2 City shipped by maxminddb-geolite2 (CC BY-SA 3.0). Stale."""
    from _maxminddb_geolite2 import geolite2_database

    return Path(geolite2_database())


def city_db_path(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return Path(settings.geoip_city) if settings.geoip_city else embedded_city_db()


def is_embedded(path: Path) -> bool:
    return path == embedded_city_db()


__all__ = ["city_db_path", "embedded_city_db", "is_embedded"]
