"""The data model (SQLAlchemy 2): registry, samples, anonymous sightings, places.

No table has a column for a peer's IP address or port: the privacy model
(DESIGN.md) is enforced by the schema itself. Migrations live in migrations/.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: An autoincrementing 64-bit key (SQLite only autoincrements INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite keeps no zone; PostgreSQL's timestamptz does. Both give aware UTC here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: swarmwatch stores UTC-aware timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- registry -----------------------------------------------------------------------------


class ApiKey(Base):
    """An API key; only its SHA-256 is stored, the key itself is shown once.

    An admin key (made only with `swarmwatch apikey create --admin`) may do anything;
    any other key may create studies, and reaches others' studies only by a grant.
    """

    __tablename__ = "api_key"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Study(Base):
    __tablename__ = "study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    k_threshold: Mapped[int] = mapped_column(Integer, default=5)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The key that created it; None for studies made with the CLI without --owner (and
    # those older than ownership): then only admin keys manage them. Keys are revoked,
    # never deleted, so a revoked owner's studies stay theirs (and admins').
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_key.id"), index=True)

    titles: Mapped[list[Title]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True
    )


class StudyGrant(Base):
    """Another key's right to read, or read and write, a study (given by its owner)."""

    __tablename__ = "study_grant"
    study_id: Mapped[int] = mapped_column(
        ForeignKey("study.id", ondelete="CASCADE"), primary_key=True
    )
    api_key_id: Mapped[int] = mapped_column(
        ForeignKey("api_key.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(8))  # read | write
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StudyKey(Base):
    """The study's secret for peer keys, wrapped with the deployment secret (swarmwatch.custody).

    Apart from the study so `study seal` can delete it. Never stored in usable form:
    a copy of the database without the secret cannot recompute any peer key.
    """

    __tablename__ = "study_key"
    study_id: Mapped[int] = mapped_column(
        ForeignKey("study.id", ondelete="CASCADE"), primary_key=True
    )
    nonce: Mapped[bytes] = mapped_column(LargeBinary(16))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary(64))
    tag: Mapped[bytes] = mapped_column(LargeBinary(32))
    secret_id: Mapped[str] = mapped_column(String(16))  # which secret wraps it (not the secret)


class PublicationKey(Base):
    """Keys the noise of published numbers that count no peer rows (analysis.samplenoise).

    In the database, since the API reads it: it hides the noise from API readers, and a
    copy of the database holds the exact numbers it perturbs anyway.
    """

    __tablename__ = "publication_key"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key: Mapped[bytes] = mapped_column(LargeBinary(32))


class FrameAnswer(Base):
    """A published time-lapse frame as last computed, kept across server starts
    (store.keptframes): one row per question and frame, replaced when the frame's
    version (its counts, record-key sums and the place tables) moves on. What it holds
    is what the API publishes for that question (exact counts for an owner's), derived
    from the rollups beside it; no peer and no address."""

    __tablename__ = "frame_answer"
    question: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    #: Whose frames: they go with the study (a deleted study leaves no published trace).
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    version: Mapped[bytes] = mapped_column(LargeBinary(16))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    #: When the data behind it was read (an open frame's, served stale after a restart).
    read_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentSecret(Base):
    """The id of the deployment secret this database's study keys are wrapped with.

    Pinned by the first process that holds a secret, so a worker started with another
    secret is refused before it can wrap a key nobody else could unwrap.
    """

    __tablename__ = "deployment_secret"
    secret_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    pinned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Title(Base):
    """The work whose downloads are counted (an episode); torrents are its releases."""

    __tablename__ = "title"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))

    study: Mapped[Study] = relationship(back_populates="titles")


class Torrent(Base):
    __tablename__ = "torrent"
    __table_args__ = (
        UniqueConstraint("study_id", "infohash_v1"),
        UniqueConstraint("study_id", "infohash_v2"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    title_id: Mapped[int] = mapped_column(ForeignKey("title.id", ondelete="CASCADE"), index=True)
    infohash_v1: Mapped[str | None] = mapped_column(String(40), index=True)
    infohash_v2: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(1000))
    size: Mapped[int | None] = mapped_column(BigInteger)
    # pending: magnet only, waiting for BEP 9 metadata; complete: info dict known; failed.
    metadata_state: Mapped[str] = mapped_column(String(16), default="pending")
    magnet: Mapped[str | None] = mapped_column(Text)
    # The bencoded info dictionary once known (from a .torrent upload or BEP 9).
    info: Mapped[bytes | None] = mapped_column(LargeBinary)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    trackers: Mapped[list[Tracker]] = relationship(
        back_populates="torrent",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(Tracker.tier, Tracker.id)",
    )

    @property
    def infohash(self) -> str:
        """The swarm's name: v1 where there is one (hybrids announce both)."""
        return self.infohash_v1 or self.infohash_v2 or ""


class Tracker(Base):
    """One announce URL of a torrent, with the crawler's state for it (BEP 12 tiers)."""

    __tablename__ = "tracker"
    __table_args__ = (UniqueConstraint("torrent_id", "url"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    torrent_id: Mapped[int] = mapped_column(
        ForeignKey("torrent.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    tier: Mapped[int] = mapped_column(Integer, default=0)
    last_announce: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_announce: Mapped[datetime | None] = mapped_column(UTCDateTime)
    interval: Mapped[int | None] = mapped_column(Integer)
    min_interval: Mapped[int | None] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    seeders: Mapped[int | None] = mapped_column(Integer)
    leechers: Mapped[int | None] = mapped_column(Integer)

    torrent: Mapped[Torrent] = relationship(back_populates="trackers")


# --- observations --------------------------------------------------------------------------


class Sample(Base):
    """One announce, DHT lookup or swarm poll, and what it returned."""

    __tablename__ = "sample"
    __table_args__ = (Index("ix_sample_torrent_started", "torrent_id", "started_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    torrent_id: Mapped[int] = mapped_column(ForeignKey("torrent.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))
    vantage: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tracker_url: Mapped[str | None] = mapped_column(String(2000))
    peers_returned: Mapped[int] = mapped_column(Integer, default=0)
    # Swarm rounds: peers known and reachable (connected in a recent round); coverage is
    # peers_returned over this. None for announces and lookups.
    known_peers: Mapped[int | None] = mapped_column(Integer)
    seeders: Mapped[int | None] = mapped_column(Integer)  # tracker scrape or BEP 33 estimate
    leechers: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class Sighting(Base):
    """An anonymous, placed sighting: no IP, no port (DESIGN.md, privacy model).

    Legacy: written before migration 0007_i17_store only. The writer keeps one peer row per
    title and peer instead; rows already here are kept, and read by nothing.
    """

    __tablename__ = "sighting"
    __table_args__ = (Index("ix_sighting_study_seen", "study_id", "seen_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"))
    title_id: Mapped[int] = mapped_column(ForeignKey("title.id", ondelete="CASCADE"))
    torrent_id: Mapped[int] = mapped_column(ForeignKey("torrent.id", ondelete="CASCADE"))
    peer_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16))
    vantage: Mapped[str] = mapped_column(String(100))
    seed: Mapped[bool | None] = mapped_column(Boolean)
    country: Mapped[str | None] = mapped_column(String(2))
    geoname_id: Mapped[int | None] = mapped_column(Integer)
    metro_id: Mapped[int | None] = mapped_column(Integer)
    h3_cell: Mapped[int | None] = mapped_column(BigInteger)
    asn: Mapped[int | None] = mapped_column(Integer)


class Peer(Base):
    """One unique peer of a title: the table behind download estimates and rankings.

    Storage grows with peers, not sightings: a repeat sighting updates this row's
    counters (and the rollups), it adds no row anywhere.
    """

    __tablename__ = "peer"
    title_id: Mapped[int] = mapped_column(
        ForeignKey("title.id", ondelete="CASCADE"), primary_key=True
    )
    peer_key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    country: Mapped[str | None] = mapped_column(String(2))
    geoname_id: Mapped[int | None] = mapped_column(Integer)
    metro_id: Mapped[int | None] = mapped_column(Integer)
    h3_cell: Mapped[int | None] = mapped_column(BigInteger)
    asn: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[bool | None] = mapped_column(Boolean)  # ever seen as a seed
    sightings: Mapped[int] = mapped_column(Integer, default=1)
    # Bitmasks of the sources (store.writer.source_bit) and vantages (vantage.id) that
    # saw the peer. Server defaults only, so older code paths that insert peers stay valid.
    sources: Mapped[int] = mapped_column(Integer, server_default="0")
    vantages: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The same before the latest upsert, which returns them: the sources and vantages a
    # batch brings the peer to for the first time add its record key to their rollup
    # cells once (store.rollups.apply_rows, source_rk and vantage_rk).
    prev_sources: Mapped[int] = mapped_column(Integer, server_default="0")
    prev_vantages: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The peer's fixed random key for cell-key perturbation, in [0, 4096) (DESIGN.md).
    record_key: Mapped[int] = mapped_column(Integer, server_default="0")
    # The latest hour and day (bucket: Unix time // 3600, // 86400) the peer is present
    # in, so presence there costs no rollup_presence row; prev_*: the same before the
    # latest upsert, which it returns (store.rollups.apply_rows). NULL: from before 0007.
    last_hour: Mapped[int | None] = mapped_column(Integer)
    last_day: Mapped[int | None] = mapped_column(Integer)
    prev_hour: Mapped[int | None] = mapped_column(Integer)
    prev_day: Mapped[int | None] = mapped_column(Integer)
    # Presence in the frames the peer moved on from: bit i of hours0 is hour
    # hour_base + i, of hours1 hour hour_base + 64 + i, of days day day_base + i (the
    # bases: the peer's first hour and day). Other frames are rollup_presence rows.
    hour_base: Mapped[int | None] = mapped_column(Integer)
    hours0: Mapped[int] = mapped_column(BigInteger, server_default="0")
    hours1: Mapped[int] = mapped_column(BigInteger, server_default="0")
    day_base: Mapped[int | None] = mapped_column(Integer)
    days: Mapped[int] = mapped_column(BigInteger, server_default="0")


class Vantage(Base):
    """A vantage point's name and its bit in peer.vantages."""

    __tablename__ = "vantage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class ReplayProgress(Base):
    """How far a replayed file is stored: one row per batch that held its lines.

    Keyed by a keyed digest of the file's first `bytes_read` bytes, so the same file, or
    one that starts with it (a log that grew), resumes after line `lines`.
    """

    __tablename__ = "replay_progress"
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    bytes_read: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(BigInteger)
    written_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Written with the coverage of its lines (replay_span, replay_edge); false for marks
    # from before migration 0011, which alone say those lines are counted.
    covered: Mapped[bool] = mapped_column(Boolean, server_default=true())


class ReplaySpan(Base):
    """Minutes of one replayed stream (a swarm as one source and vantage saw it) whose
    every line is counted: slots lo..hi, Unix time // 60 (store.coverage).

    Written in the transaction of the write batch that holds those lines' sightings, so
    a later ingest of any file that overlaps them skips exactly what was counted.
    """

    __tablename__ = "replay_span"
    infohash: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(100), primary_key=True)
    lo: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hi: Mapped[int] = mapped_column(Integer)


class ReplayEdge(Base):
    """A minute of a replayed stream that is counted only in part (where a file began or
    ended): the keyed digests of the sightings counted in it, 8 bytes each, in parts
    (one per write batch that added some). A minute has rows here or is in a span,
    never both, so storage grows with files and streams, not with sightings."""

    __tablename__ = "replay_edge"
    infohash: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(100), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    part: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    digests: Mapped[bytes] = mapped_column(LargeBinary)


class StoreSecret(Base):
    """A secret of the store itself, made on first use and stored only wrapped with the
    deployment secret, as study keys are (swarmwatch.custody): `replay` keys the digests
    of replay_progress (which hash file bytes holding raw addresses)."""

    __tablename__ = "store_secret"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(16))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary(64))
    tag: Mapped[bytes] = mapped_column(LargeBinary(32))
    secret_id: Mapped[str] = mapped_column(String(16))  # which secret wraps it (not the secret)


class BatchToken(Base):
    """A writer batch known to be committed: asked after a commit whose outcome was lost."""

    __tablename__ = "write_batch"
    token: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    written_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Anomaly(Base):
    """Sightings the pipeline could not place at a city, counted per torrent, source and reason.

    alpha60's "anomalies": no city in the database, null island, or an address in a
    private, reserved, multicast, bogon or loopback range. The sightings themselves
    are still stored (with no city); this table says why they have none.
    """

    __tablename__ = "anomaly"
    torrent_id: Mapped[int] = mapped_column(
        ForeignKey("torrent.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class GeoipDatabase(Base):
    """A geolocation database the pipeline has placed sightings with, for reproducibility."""

    __tablename__ = "geoip_database"
    __table_args__ = (UniqueConstraint("kind", "database_type", "build_epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # city | asn
    database_type: Mapped[str] = mapped_column(String(100))
    build_epoch: Mapped[int] = mapped_column(BigInteger)
    embedded: Mapped[bool] = mapped_column(Boolean, default=False)  # the stale 2018 default
    first_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- places ------------------------------------------------------------------------------------


class Metro(Base):
    """An urban area: built from GeoNames (swarmwatch.pipeline.places) or loaded from a
    user's table (swarmwatch.pipeline.urban_areas), which also names its source."""

    __tablename__ = "metro"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # core geoname_id or area id
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    population: Mapped[int] = mapped_column(BigInteger)
    land_area_km2: Mapped[float | None] = mapped_column(Float, nullable=True)
    population_source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    population_year: Mapped[int | None] = mapped_column(Integer, nullable=True)


class City(Base):
    """A GeoNames place; GeoIP2's city.geoname_id joins here directly."""

    __tablename__ = "city"
    geoname_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2), index=True)
    admin1: Mapped[str | None] = mapped_column(String(20))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    population: Mapped[int] = mapped_column(BigInteger)
    timezone: Mapped[str | None] = mapped_column(String(64))
    metro_id: Mapped[int | None] = mapped_column(Integer, index=True)


__all__ = [
    "Anomaly",
    "ApiKey",
    "Base",
    "BatchToken",
    "City",
    "DeploymentSecret",
    "PublicationKey",
    "GeoipDatabase",
    "Metro",
    "Peer",
    "ReplayEdge",
    "ReplayProgress",
    "ReplaySpan",
    "Sample",
    "Sighting",
    "StoreSecret",
    "Study",
    "StudyGrant",
    "StudyKey",
    "Title",
    "Torrent",
    "Tracker",
    "UTCDateTime",
    "Vantage",
    "utcnow",
]
