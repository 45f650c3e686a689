"""GeoIP databases: what is loaded (`geoip info`) and installing a current one (`geoip install`).

A download happens only when a user runs install; the file is verified with geoip2
before it atomically replaces the installed one, so a bad download changes nothing.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from swarmwatch.config import Settings, get_settings
from swarmwatch.geoip import (
    asn_db_path,
    city_db_path,
    embedded_city_db,
    installed_path,
)

log = logging.getLogger(__name__)

#: MaxMind updates GeoLite2 twice a week and DB-IP monthly: older than this is stale.
STALE_AFTER_DAYS = 45
#: Installed file names inside settings.geoip_dir.
#: Largest download accepted (GeoLite2 City is ~60 MB, DB-IP City Lite ~130 MB unpacked).
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
#: A public address to probe a database with (it need not be in it).
_PROBE = "81.2.69.160"

MAXMIND_URL = (
    "https://download.maxmind.com/app/geoip_download"
    "?edition_id=GeoLite2-City&license_key={key}&suffix=tar.gz"
)
DBIP_URL = "https://download.db-ip.com/free/dbip-city-lite-{year:04d}-{month:02d}.mmdb.gz"


class GeoipError(Exception):
    """A GeoIP database is missing, unreadable, of the wrong kind, or failed to download."""


@dataclass(frozen=True, slots=True)
class GeoipInfo:
    kind: str  # city | asn
    path: Path
    database_type: str
    build_date: datetime
    age_days: float
    embedded: bool
    networks: int  # search-tree nodes, a size indication
    description: str

    @property
    def stale(self) -> bool:
        return self.embedded or self.age_days > STALE_AFTER_DAYS

    @property
    def warning(self) -> str | None:
        if self.embedded:
            return (
                f"STALE: the embedded GeoLite2 City was built {self.build_date:%Y-%m-%d} "
                f"({self.age_days / 365.25:.1f} years ago); addresses have moved since. "
                "Run `swarmwatch geoip install` (MaxMind license key in "
                "SWARMWATCH_MAXMIND_LICENSE_KEY, or DB-IP City Lite without one)."
            )
        if self.stale:
            return (
                f"STALE: {self.database_type} was built {self.age_days:.0f} days ago; "
                "run `swarmwatch geoip install` for a current one."
            )
        return None


# The choice of database lives in swarmwatch.geoip; these names are kept for callers here.
active_city_db = city_db_path
active_asn_db = asn_db_path


def database_info(path: Path, kind: str = "city", *, now: datetime | None = None) -> GeoipInfo:
    """Type, build date and age of a MaxMind-format database."""
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoipError(f"cannot read {path}: {type(exc).__name__}") from None
    try:
        meta = reader.metadata()
        built = datetime.fromtimestamp(meta.build_epoch, UTC)
        now = now or datetime.now(UTC)
        description = meta.description.get("en", "") if isinstance(meta.description, dict) else ""
        try:
            embedded = path.resolve() == embedded_city_db().resolve()
        except ImportError:
            embedded = False
        return GeoipInfo(
            kind=kind,
            path=path,
            database_type=str(meta.database_type),
            build_date=built,
            age_days=(now - built) / timedelta(days=1),
            embedded=embedded,
            networks=int(meta.node_count),
            description=str(description),
        )
    finally:
        reader.close()


def geoip_info(settings: Settings | None = None, *, now: datetime | None = None) -> list[GeoipInfo]:
    """`swarmwatch geoip info`: the City database in use, and the ASN one if any."""
    settings = settings or get_settings()
    infos = [database_info(active_city_db(settings), "city", now=now)]
    asn = active_asn_db(settings)
    if asn is not None:
        infos.append(database_info(asn, "asn", now=now))
    return infos


def verify_database(path: Path, kind: str = "city") -> None:
    """Open path with geoip2 as the kind asked for and look an address up; else GeoipError."""
    try:
        with geoip2.database.Reader(str(path)) as reader:
            db_type = reader.metadata().database_type
            want = "City" if kind == "city" else "ASN"
            if want.lower() not in db_type.lower():
                raise GeoipError(f"{path.name} is a {db_type!r} database, not {want}")
            try:
                if kind == "city":
                    reader.city(_PROBE)
                else:
                    reader.asn(_PROBE)
            except geoip2.errors.AddressNotFoundError:
                pass  # a database need not hold every address
    except GeoipError:
        raise
    except Exception as exc:  # corrupt files fail in many ways; all mean "not usable"
        raise GeoipError(f"{path.name} is not a usable database ({type(exc).__name__})") from None


def install_file(
    source: Path, settings: Settings | None = None, *, kind: str = "city"
) -> GeoipInfo:
    """Verify source and swap it in as the installed database, atomically.

    The copy is verified inside geoip_dir and then renamed over the old file, so a
    reader sees either the old or the new database, never half of one.
    """
    settings = settings or get_settings()
    target = installed_path(settings, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{kind}-", suffix=".mmdb.part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        verify_database(tmp, kind)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info = database_info(target, kind)
    log.info("installed %s database %s built %s", kind, info.database_type, info.build_date.date())
    return info


def _extract_mmdb(payload: bytes, name: str) -> bytes:
    """The .mmdb inside a MaxMind .tar.gz or a DB-IP .mmdb.gz."""
    if name.endswith(".tar.gz"):
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(".mmdb"):
                    f = tar.extractfile(member)
                    if f is not None:
                        return f.read(MAX_DOWNLOAD_BYTES + 1)
        raise GeoipError("the archive holds no .mmdb file")
    if name.endswith(".gz"):
        with gzip.GzipFile(fileobj=io.BytesIO(payload)) as gz:
            return gz.read(MAX_DOWNLOAD_BYTES + 1)
    return payload


def download_city_database(
    settings: Settings | None = None,
    *,
    source: str = "auto",
    client: Any = None,
    now: datetime | None = None,
) -> GeoipInfo:
    """`swarmwatch geoip install`: fetch a current City database and install it.

    source: "maxmind" (needs SWARMWATCH_MAXMIND_LICENSE_KEY), "dbip" (DB-IP City Lite,
    CC BY 4.0, no key), or "auto" (MaxMind with a key, else DB-IP). Only ever called
    by a user's explicit command: tests install local files through install_file().
    """
    import httpx

    settings = settings or get_settings()
    if source == "auto":
        source = "maxmind" if settings.maxmind_license_key else "dbip"
    now = now or datetime.now(UTC)
    if source == "maxmind":
        if not settings.maxmind_license_key:
            raise GeoipError("MaxMind needs SWARMWATCH_MAXMIND_LICENSE_KEY")
        urls = [(MAXMIND_URL.format(key=settings.maxmind_license_key), "GeoLite2-City.tar.gz")]
    elif source == "dbip":
        last = (now.replace(day=1) - timedelta(days=1)).replace(day=1)
        urls = [
            (DBIP_URL.format(year=d.year, month=d.month), "dbip-city-lite.mmdb.gz")
            for d in (now, last)  # this month's file appears a few days into the month
        ]
    else:
        raise GeoipError(f"unknown source {source!r} (maxmind, dbip or auto)")

    http = client or httpx.Client(follow_redirects=True, timeout=120.0)
    try:
        payload: bytes | None = None
        name = ""
        for url, filename in urls:
            response = http.get(url)
            if response.status_code == 200:
                payload, name = response.content, filename
                break
            # The URL may hold the license key: report only the status.
            log.warning("geoip download from %s answered %d", source, response.status_code)
        if payload is None:
            raise GeoipError(f"no database could be downloaded from {source}")
        if len(payload) > MAX_DOWNLOAD_BYTES:
            raise GeoipError("download larger than MAX_DOWNLOAD_BYTES")
        mmdb = _extract_mmdb(payload, name)
    except httpx.HTTPError as exc:
        raise GeoipError(f"download from {source} failed ({type(exc).__name__})") from None
    finally:
        if client is None:
            http.close()
    Path(settings.geoip_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.geoip_dir) as tmpdir:
        path = Path(tmpdir) / "download.mmdb"
        path.write_bytes(mmdb)
        return install_file(path, settings, kind="city")


__all__ = [
    "STALE_AFTER_DAYS",
    "GeoipError",
    "GeoipInfo",
    "active_asn_db",
    "active_city_db",
    "database_info",
    "download_city_database",
    "geoip_info",
    "install_file",
    "installed_path",
    "verify_database",
]
