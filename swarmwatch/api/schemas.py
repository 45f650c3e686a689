"""Request and response bodies of the registry API (XCreate in, XPublic out)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, model_validator

T = TypeVar("T")


#: UTF-16 surrogate code points: JSON can spell one alone ("\ud800"), UTF-8 cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here, on both engines, as bad input.
    if "\x00" in value:
        raise ValueError("text must not contain NUL (\\x00) characters")
    # Neither database driver can encode a lone surrogate: it would fail at the write.
    if _SURROGATE.search(value):
        raise ValueError("text must not contain lone UTF-16 surrogates (\\ud800-\\udfff)")
    return value


#: Free text from a client: any Unicode a UTF-8 database can store (no NUL, no surrogates).
Text = Annotated[str, AfterValidator(_storable)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class StudyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=200, pattern=r"\S")
    description: Text = Field(default="", max_length=20_000)
    # Strict: JSON true is not 1, nor "5" nor 5.0 a k (a study made with k = 1 by mistake).
    k_threshold: StrictInt | None = Field(
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
    anomalies: int | None = None


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
