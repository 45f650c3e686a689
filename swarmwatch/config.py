"""Settings, declared once: environment variables with the SWARMWATCH_ prefix.

Every default carries a one-line reason. Read them through get_settings() so
tests can override the environment and call get_settings.cache_clear().
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARMWATCH_", extra="ignore")

    # Embedded default: a file in the working directory needs no server to run.
    database_url: str = "sqlite:///swarmwatch.db"

    # Safe by default: a fresh install talks only to loopback until told otherwise.
    loopback_only: bool = True

    # None means the embedded (stale, 2018) GeoLite2 City from maxminddb-geolite2.
    geoip_city: str | None = None
    # The ASN database is optional; without it sightings carry no ASN.
    geoip_asn: str | None = None
    # Where `swarmwatch geoip install` puts a downloaded database.
    geoip_dir: str = "geoip"
    # Needed only for MaxMind downloads; DB-IP City Lite needs none.
    maxmind_license_key: str | None = None

    # Empty: a loopback test network must never fall back to the public routers.
    dht_bootstrap: str = ""
    # 0 lets the OS choose; set a fixed port for a long-running crawler behind a firewall.
    dht_port: int = 0
    # Name of this worker's vantage point, recorded with every sample and sighting.
    vantage: str = "default"

    # The deployment secret that wraps every study key, kept outside the database so a copy
    # of it cannot reverse or link peers. No default: crawling and ingest refuse to run
    # without one rather than make a key nobody can use again. A file (0600, from
    # `swarmwatch secret create`) shared by all workers...
    secret_file: str | None = None
    # ...or the secret itself, for platforms that hand secrets over in the environment.
    secret: SecretStr | None = None

    # alpha60's k-anonymity default: counts below 5 are never published.
    k_threshold_default: int = Field(default=5, ge=1)

    # Politeness floor: never re-announce to a tracker more often than this,
    # whatever min interval it advertises (alpha60 used 30 s; 60 s halves the load).
    tracker_min_interval: float = Field(default=60.0, ge=0)
    # Cap on the interval we wait: a tracker asking for hours would starve the sample.
    tracker_max_interval: float = Field(default=1800.0, gt=0)
    # Peers asked for per announce: most trackers cap at 50-200.
    tracker_numwant: int = Field(default=200, ge=1, le=10_000)
    # Seconds before an unanswered tracker request counts as a failure.
    tracker_timeout: float = Field(default=15.0, gt=0)
    # Seconds per swarm-session round: every connected peer is sighted again each round,
    # dropped peers are dialled again, and coverage is reported (alpha60 used 30 s).
    swarm_round_seconds: float = Field(default=30.0, gt=0)
    # Connections per swarm the session keeps at most: a big swarm cannot take every
    # socket, and reconnects stay within it.
    swarm_connection_budget: int = Field(default=200, ge=1, le=10_000)
    # DHT queries per second across all lookups: gentle on a home connection.
    dht_query_rate: float = Field(default=200.0, gt=0)

    # Writes per second per API client: registering a study's torrents is a burst, not a stream.
    api_write_rate: float = Field(default=20.0, gt=0)
    api_write_burst: float = Field(default=200.0, ge=1)
    # Expensive reads (rankings, frames, exports) per second per client: a page load is ~5.
    api_read_rate: float = Field(default=100.0, gt=0)
    api_read_burst: float = Field(default=500.0, ge=1)

    # Seconds a whole analysis answer (rankings, frames, summary) is reused for identical
    # requests: those answers already lag ingest by seconds, and a popular map costs one
    # computation per second instead of one per viewer. 0 turns the reuse off.
    api_answer_cache_seconds: float = Field(default=1.0, ge=0, le=60)

    # H3 outlines (POST /api/v1/geometry/h3, no key needed: the public map asks for them)
    # cost ~45 us of CPU per cell: a client may have this many cells computed per second,
    # in bursts up to the burst (two full 50,000-cell requests); answers kept for reuse
    # (identical requests from every viewer of a map) cost nothing, up to this many bytes.
    api_geometry_cells_rate: float = Field(default=5_000.0, gt=0)
    api_geometry_cells_burst: float = Field(default=100_000.0, ge=1)
    api_geometry_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    # Largest .torrent upload accepted: real ones are < 1 MiB, 4 MiB covers huge v2 hybrids.
    max_torrent_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Bounded queue between crawlers and pipeline: a full queue slows crawlers, never grows memory.
    pipeline_queue_size: int = Field(default=100_000, ge=1)
    # Sightings per write transaction: big batches amortise commits.
    writer_batch_size: int = Field(default=5_000, ge=1)
    # Longest a sighting waits in memory before it is flushed (the crash-loss bound).
    writer_flush_seconds: float = Field(default=1.0, gt=0)

    # A dead worker's swarms are taken over after this: three missed heartbeats, not one slow one.
    lease_seconds: float = Field(default=45.0, gt=0)
    # How often a worker renews its leases and rebalances; a third of lease_seconds.
    lease_heartbeat_seconds: float = Field(default=15.0, gt=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
