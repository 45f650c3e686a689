"""Request and response bodies of the registry API (XCreate in, XPublic out)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

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


#: The same rule in the OpenAPI document, so that clients (and schemathesis) know it.
NO_NUL = r"^[^\x00]*$"
#: Free text from a client: any Unicode a UTF-8 database can store (no NUL, no surrogates).
Text = Annotated[str, Field(pattern=NO_NUL), AfterValidator(_storable)]


def _json_integer(value: object) -> object:
    # JSON true is no k (it made a study with k = 1), nor is the string "5"; 5.0 is
    # an integer in JSON Schema's sense, so pydantic's own check (no 5.5) follows.
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


#: An integer as JSON Schema has it: 5 or 5.0, never true or "5".
JSON_INTEGER = BeforeValidator(_json_integer)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class StudyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Not Text: its pattern would win over this one (something besides ASCII white space;
    # \s differs between regex engines, e.g. on U+0085, and clients check it too).
    name: Annotated[
        str,
        Field(min_length=1, max_length=200, pattern=r"^[^\x00]*[^\x00\t\n\v\f\r ][^\x00]*$"),
        AfterValidator(_storable),
    ]
    description: Text = Field(default="", max_length=20_000)
    # The bounds before the validator: after it they reach the JSON schema as raw ge/le.
    k_threshold: Annotated[int, Field(ge=1, le=1000), JSON_INTEGER] | None = Field(
        default=None, description="counts below k are suppressed; default 5"
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


#: v1 hex (40), v2 hex (64) or v1 base32 (32): registry.parse_infohash's forms.
INFOHASH = r"^([0-9a-fA-F]{40}|[0-9a-fA-F]{64}|[A-Za-z2-7]{32})$"
#: A BEP 9 magnet with a v1 (btih) or v2 (btmh, multihash 0x12 0x20) exact topic.
MAGNET = (
    r"^magnet:\?([^\x00]*&)?xt=urn:(btih:([0-9a-fA-F]{40}|[A-Za-z2-7]{32})"
    r"|btmh:1220[0-9a-fA-F]{64})(&[^\x00]*)?$"
)
#: An announce URL we can crawl (BEP 3 HTTP, BEP 15 UDP), without control characters.
TRACKER_URL = r"^([hH][tT][tT][pP][sS]?|[uU][dD][pP])://[^\x00-\x1f]+$"


class TorrentCreate(BaseModel):
    """Register by magnet or infohash (v1 hex, v2 hex or v1 base32): exactly one of the two."""

    # "Exactly one of" in the document too, so that generated clients know it.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["magnet"],
                    "properties": {"magnet": {"type": "string"}, "infohash": {"type": "null"}},
                },
                {
                    "required": ["infohash"],
                    "properties": {"infohash": {"type": "string"}, "magnet": {"type": "null"}},
                },
            ]
        },
    )
    study_id: int = Field(ge=1, le=2**31 - 1)
    title: Text | None = Field(default=None, min_length=1, max_length=300)
    # The forms below are in the document; the registry's parsers enforce them, with a
    # detail that says what is wrong (a pattern mismatch would not).
    magnet: (
        Annotated[
            str,
            Field(max_length=100_000, json_schema_extra={"pattern": MAGNET}),
            AfterValidator(_storable),
        ]
        | None
    ) = None
    infohash: (
        Annotated[
            str,
            Field(max_length=200, json_schema_extra={"pattern": INFOHASH}),
            AfterValidator(_storable),
        ]
        | None
    ) = None
    trackers: list[
        Annotated[
            str,
            Field(max_length=2000, json_schema_extra={"pattern": TRACKER_URL}),
            AfterValidator(_storable),
        ]
    ] = Field(default_factory=list, max_length=200)

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
    peers_returned: int | None = Field(
        description="addresses the answer held: exact for the study's owners, cell-key "
        "perturbed and withheld below k for anyone else"
    )
    seeders: int | None = Field(
        description="a tracker's scrape or the DHT's BEP 33 estimate, as given (public: "
        "anyone can ask the same); a swarm round's own count of seeding peers, perturbed "
        "as peers_returned"
    )
    leechers: int | None = Field(description="as seeders, for leechers")
    error: str | None


class CrawlStatus(BaseModel):
    exact: bool = Field(
        default=False,
        description="true for the study's owners (exact counts); false: every count of "
        "peers or sightings below is cell-key perturbed and withheld below k",
    )
    samples: int
    peers_returned: int | None = Field(
        default=None,
        description="addresses returned over all samples (sightings, not distinct peers): "
        "exact for the study's owners, perturbed and withheld below k for anyone else",
    )
    last_samples: list[SamplePublic]
    unique_peers: int | None = Field(
        default=None,
        description="distinct peers of this torrent's title: exact for the study's owners, "
        "cell-key perturbed and withheld below k for anyone else",
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
