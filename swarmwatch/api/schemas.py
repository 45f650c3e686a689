"""Request and response bodies of the registry API (XCreate in, XPublic out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here, on both engines, as bad input.
    if "\x00" in value:
        raise ValueError("text must not contain NUL (\\x00) characters")
    return value


#: Free text from a client: any Unicode except NUL.
Text = Annotated[str, AfterValidator(_no_nul)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class StudyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=200, pattern=r"\S")
    description: Text = Field(default="", max_length=20_000)
    k_threshold: int | None = Field(
        default=None, ge=1, le=1000, description="counts below k are suppressed; default 5"
    )
    private: bool = Field(default=False, description="reads need an API key")
    titles: list[Text] = Field(default_factory=list, max_length=1000)


class TitlePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str


class StudyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str
    k_threshold: int
    private: bool
    created_at: datetime
    sealed_at: datetime | None
    titles: list[TitlePublic]


class GrantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key_id: int = Field(ge=1, le=2**31 - 1, description="the key's id (GET /api/v1/keys/me)")
    role: str = Field(pattern="^(read|write)$", description="read, or read and write")


class GrantPublic(BaseModel):
    api_key_id: int
    name: str
    role: str
    granted_at: datetime


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    prefix: str
    admin: bool
    created_at: datetime


class TorrentCreate(BaseModel):
    """Register by magnet or infohash (v1 hex, v2 hex or v1 base32): exactly one of the two."""

    model_config = ConfigDict(extra="forbid")
    study_id: int = Field(ge=1, le=2**31 - 1)
    title: Text | None = Field(default=None, min_length=1, max_length=300)
    magnet: Text | None = Field(default=None, max_length=100_000)
    infohash: Text | None = Field(default=None, max_length=200)
    trackers: list[Text] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _one_of(self) -> TorrentCreate:
        if (self.magnet is None) == (self.infohash is None):
            raise ValueError("give exactly one of 'magnet' and 'infohash'")
        return self


class TrackerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    url: str
    tier: int
    last_announce: datetime | None
    next_announce: datetime | None
    interval: int | None
    min_interval: int | None
    failures: int
    last_error: str | None
    seeders: int | None
    leechers: int | None


class SamplePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    source: str
    vantage: str
    started_at: datetime
    tracker_url: str | None
    peers_returned: int
    seeders: int | None
    leechers: int | None
    error: str | None


class CrawlStatus(BaseModel):
    samples: int
    peers_returned: int
    last_samples: list[SamplePublic]
    unique_peers: int | None = Field(
        default=None, description="distinct peers of this torrent's title, k-suppressed"
    )
    anomalies: int | None = Field(
        default=None, description="peers of the title not placed at a city, k-suppressed"
    )
    seeds: int | None = Field(default=None, description="peers any sighting showed seeding")
    leechers: int | None = Field(
        default=None, description="peers seen with known state, never seeding"
    )
    unknown_state: int | None = Field(
        default=None, description="peers whose seed state no sighting showed (not leechers)"
    )
    round_sighted: int | None = Field(
        default=None, description="peers the last swarm-session round sighted"
    )
    round_reachable: int | None = Field(
        default=None, description="peers known and reachable at the last swarm round"
    )
    coverage: float | None = Field(
        default=None, description="round_sighted / round_reachable of the last swarm round"
    )


class TorrentPublic(BaseModel):
    infohash: str
    infohash_v1: str | None
    infohash_v2: str | None
    study_id: int
    title_id: int
    title: str
    name: str | None
    size: int | None
    metadata_state: str
    added_at: datetime
    trackers: list[TrackerPublic]
    status: CrawlStatus | None = None
