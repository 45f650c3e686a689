"""The torrent registry: parse what researchers register and store it.

Magnets, hex v1/v2 and base32 infohashes, and .torrent files are parsed with
libtorrent; bad input raises RegistryInputError before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import libtorrent as lt
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from swarmwatch import bencode
from swarmwatch.crawl import WatchedTorrent
from swarmwatch.store.models import Study, Title, Torrent, Tracker, utcnow

#: BEP 3: a v1 infohash is the SHA-1 of the info dict, 20 bytes, 40 hex digits.
V1_HEX_LEN = 40
#: BEP 52: a v2 infohash is the SHA-256 of the info dict, 32 bytes, 64 hex digits.
V2_HEX_LEN = 64
#: BEP 9: a v1 infohash may also be written as 32 base32 characters in a magnet.
V1_BASE32_LEN = 32
#: Announce URLs we can crawl (BEP 3 HTTP, BEP 15 UDP).
TRACKER_SCHEMES = ("http://", "https://", "udp://")
MAX_TRACKERS = 200
DEFAULT_TITLE = "default"

_HEX = re.compile(r"^[0-9a-fA-F]+$")


class RegistryError(Exception):
    """Base of the registry's errors (see the subclasses for the HTTP status)."""


class RegistryInputError(RegistryError):
    """Malformed magnet, infohash, tracker URL or .torrent file (422)."""


class NotFound(RegistryError):
    """Unknown study, title or torrent (404)."""


class DuplicateTorrent(RegistryError):
    """The infohash is already registered in this study (409)."""

    def __init__(self, existing: Torrent) -> None:
        self.existing = existing
        super().__init__(
            f"torrent {existing.infohash} is already registered in study {existing.study_id} "
            f"(title {existing.title_id}, name {existing.name!r})"
        )


class StudySealed(RegistryError):
    """The study is sealed and accepts no new torrents (409)."""


@dataclass(frozen=True)
class ParsedTorrent:
    """What a registration says about a swarm, before it is stored."""

    infohash_v1: str | None
    infohash_v2: str | None
    name: str | None = None
    size: int | None = None
    trackers: tuple[tuple[str, int], ...] = ()
    magnet: str | None = None
    info: bytes | None = field(default=None, repr=False)


def clean_name(name: str | None) -> str | None:
    """A display name from a magnet or .torrent: no NUL (PostgreSQL text cannot hold it)."""
    if not name:
        return None
    return name.replace("\x00", "")[:1000] or None


def parse_infohash(text: str) -> ParsedTorrent:
    """Hex v1 (40), hex v2 (64) or base32 v1 (32 characters)."""
    s = text.strip()
    if len(s) == V1_HEX_LEN and _HEX.match(s):
        return ParsedTorrent(infohash_v1=s.lower(), infohash_v2=None)
    if len(s) == V2_HEX_LEN and _HEX.match(s):
        return ParsedTorrent(infohash_v1=None, infohash_v2=s.lower())
    if len(s) == V1_BASE32_LEN:
        try:
            raw = base64.b32decode(s.upper())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 20:
            return ParsedTorrent(infohash_v1=raw.hex(), infohash_v2=None)
    raise RegistryInputError(
        "infohash must be 40 hex digits (v1), 64 hex digits (v2) or 32 base32 characters (v1); "
        f"got {len(s)} characters"
    )


def parse_magnet(uri: str) -> ParsedTorrent:
    """A BEP 9 magnet URI (v1 btih, v2 btmh or both), with its trackers."""
    if not uri.startswith("magnet:?"):
        raise RegistryInputError("a magnet URI starts with 'magnet:?'")
    try:
        params = lt.parse_magnet_uri(uri)
    except RuntimeError as exc:
        raise RegistryInputError(f"malformed magnet URI: {exc}") from None
    hashes = params.info_hashes
    v1 = str(hashes.v1) if hashes.has_v1() else None
    v2 = str(hashes.v2) if hashes.has_v2() else None
    if v1 is None and v2 is None:
        raise RegistryInputError("malformed magnet URI: no infohash")
    trackers = _check_trackers(zip(_trackers(params), _tiers(params), strict=False))
    return ParsedTorrent(
        infohash_v1=v1,
        infohash_v2=v2,
        name=clean_name(_magnet_name(params, uri)),
        trackers=trackers,
        magnet=uri,
    )


def parse_torrent_file(data: bytes) -> ParsedTorrent:
    """A .torrent file (v1, v2 or hybrid): infohashes, name, size, trackers, info dict."""
    try:
        root = bencode.decode(data)
    except bencode.BencodeError as exc:
        raise RegistryInputError(f"not a .torrent file: {exc}") from None
    if not isinstance(root, dict) or not isinstance(root.get(b"info"), dict):
        raise RegistryInputError("not a .torrent file: no info dictionary")
    try:
        params = lt.load_torrent_buffer(data)
    except RuntimeError as exc:
        raise RegistryInputError(f"invalid .torrent file: {exc}") from None
    ti = params.ti
    if ti is None:
        raise RegistryInputError("invalid .torrent file: no metadata")
    hashes = params.info_hashes
    trackers = _check_trackers(zip(_trackers(params), _tiers(params), strict=False))
    return ParsedTorrent(
        infohash_v1=str(hashes.v1) if hashes.has_v1() else None,
        infohash_v2=str(hashes.v2) if hashes.has_v2() else None,
        name=clean_name(ti.name()),
        size=int(ti.total_size()),
        trackers=trackers,
        info=bytes(ti.info_section()),
    )


def parse_tracker_list(urls: list[str]) -> tuple[tuple[str, int], ...]:
    """Extra trackers given alongside an infohash: each its own tier, in order."""
    return _check_trackers((u, i) for i, u in enumerate(urls))


def _magnet_name(params: lt.add_torrent_params, uri: str) -> str | None:
    """The magnet's dn; not UTF-8 (any bytes may be %-escaped there) gives U+FFFD for the rest.

    libtorrent hands its name to Python as UTF-8 and raises on anything else, so such a
    name is read from the URI itself instead.
    """
    try:
        return str(params.name)
    except UnicodeDecodeError:
        query = uri.partition("?")[2]
        names = [
            v for k, v in parse_qsl(query, keep_blank_values=True, errors="replace") if k == "dn"
        ]
        return names[0] if names else None


def _trackers(params: lt.add_torrent_params) -> list[str]:
    try:
        return list(params.trackers)
    except UnicodeDecodeError:  # a URL is bytes that are not UTF-8: not one we could announce to
        raise RegistryInputError("tracker URL is not UTF-8") from None


def _tiers(params: lt.add_torrent_params) -> list[int]:
    tiers = list(params.tracker_tiers)
    return tiers + [0] * (len(params.trackers) - len(tiers))


def _check_trackers(pairs: object) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for url, tier in pairs:  # type: ignore[attr-defined]
        url = str(url).strip()
        if any(ord(c) < 0x20 for c in url):
            raise RegistryInputError("tracker URL contains control characters")
        if not url.lower().startswith(TRACKER_SCHEMES):
            raise RegistryInputError(f"tracker URL must be http(s):// or udp://: {url[:200]!r}")
        if len(url) > 2000:
            raise RegistryInputError("tracker URL longer than 2000 characters")
        if url not in seen:
            seen.add(url)
            out.append((url, int(tier)))
    if len(out) > MAX_TRACKERS:
        raise RegistryInputError(f"more than {MAX_TRACKERS} trackers")
    return tuple(out)


def merge_trackers(
    first: tuple[tuple[str, int], ...], extra: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, int], ...]:
    """Trackers of the torrent, then extra ones in tiers after them (BEP 12)."""
    known = {u for u, _ in first}
    base = max((t for _, t in first), default=-1) + 1
    return first + tuple((u, base + t) for u, t in extra if u not in known)


# --- storage -------------------------------------------------------------------------------


def get_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound(f"study {study_id} not found")
    return study


def get_or_create_title(session: Session, study: Study, name: str | None) -> Title:
    """The named title; with no name, the study's only title, else one called 'default'."""
    if name is None or not name.strip():
        titles = list(session.scalars(select(Title).where(Title.study_id == study.id)))
        if len(titles) == 1:
            return titles[0]
    name = (name or DEFAULT_TITLE).strip() or DEFAULT_TITLE
    query = select(Title).where(Title.study_id == study.id, Title.name == name)
    title = session.scalar(query)
    if title is None:
        # Two registrations may create the same title at once: the loser re-reads it.
        try:
            with session.begin_nested():
                title = Title(study_id=study.id, name=name)
                session.add(title)
        except IntegrityError:
            title = session.scalars(query).one()
    return title


def find_duplicate(session: Session, study_id: int, parsed: ParsedTorrent) -> Torrent | None:
    conds = []
    if parsed.infohash_v1:
        conds.append(Torrent.infohash_v1 == parsed.infohash_v1)
    if parsed.infohash_v2:
        conds.append(Torrent.infohash_v2 == parsed.infohash_v2)
    return session.scalar(select(Torrent).where(Torrent.study_id == study_id, or_(*conds)))


def register_torrent(
    session: Session,
    study_id: int,
    parsed: ParsedTorrent,
    *,
    title: str | None = None,
    extra_trackers: tuple[tuple[str, int], ...] = (),
) -> Torrent:
    """Store a parsed torrent in a study. Raises NotFound, StudySealed, DuplicateTorrent."""
    study = get_study(session, study_id)
    if study.sealed_at is not None:
        raise StudySealed(f"study {study_id} is sealed and accepts no new torrents")
    existing = find_duplicate(session, study_id, parsed)
    if existing is not None:
        raise DuplicateTorrent(existing)
    title_row = get_or_create_title(session, study, title)
    torrent = Torrent(
        study_id=study.id,
        title_id=title_row.id,
        infohash_v1=parsed.infohash_v1,
        infohash_v2=parsed.infohash_v2,
        name=parsed.name,
        size=parsed.size,
        magnet=parsed.magnet,
        info=parsed.info,
        metadata_state="complete" if parsed.info else "pending",
        added_at=utcnow(),
    )
    for url, tier in merge_trackers(parsed.trackers, extra_trackers):
        torrent.trackers.append(Tracker(url=url, tier=tier))
    try:
        with session.begin_nested():
            session.add(torrent)
    except IntegrityError:
        # The same infohash registered concurrently: the unique constraint decided.
        existing = find_duplicate(session, study_id, parsed)
        if existing is None:
            raise
        raise DuplicateTorrent(existing) from None
    return torrent


def torrents_by_infohash(session: Session, infohash: str) -> list[Torrent]:
    """Every registration of a swarm (one per study), by v1 or v2 hex or base32 v1."""
    parsed = parse_infohash(infohash)
    cond = (
        Torrent.infohash_v1 == parsed.infohash_v1
        if parsed.infohash_v1
        else Torrent.infohash_v2 == parsed.infohash_v2
    )
    stmt = select(Torrent).where(cond).options(selectinload(Torrent.trackers))
    return list(session.scalars(stmt.order_by(Torrent.id)))


def count_torrents(session: Session, study_id: int | None) -> int:
    stmt = select(func.count(Torrent.id))
    if study_id is not None:
        stmt = stmt.where(Torrent.study_id == study_id)
    return int(session.scalar(stmt) or 0)


def watched_torrents(session: Session) -> list[WatchedTorrent]:
    """Swarms the crawlers should watch: every torrent of an unsealed study, once per infohash."""
    stmt = (
        select(Torrent)
        .join(Study, Study.id == Torrent.study_id)
        .where(Study.sealed_at.is_(None))
        .options(selectinload(Torrent.trackers))
        .order_by(Torrent.id)
    )
    merged: dict[str, WatchedTorrent] = {}
    for t in session.scalars(stmt):
        trackers = tuple((tr.url, tr.tier) for tr in t.trackers)
        prev = merged.get(t.infohash)
        if prev is not None:  # the same swarm in two studies: crawl it once
            trackers = merge_trackers(prev.trackers, trackers)
        merged[t.infohash] = WatchedTorrent(
            infohash_v1=t.infohash_v1,
            infohash_v2=t.infohash_v2,
            trackers=trackers,
            magnet=t.magnet or (prev.magnet if prev else None),
            info=t.info or (prev.info if prev else None),
        )
    return list(merged.values())


def record_metadata(session: Session, infohash: str, name: str, size: int, info: bytes) -> int:
    """BEP 9 metadata arrived for a magnet-registered swarm: fill in every registration."""
    n = 0
    for t in torrents_by_infohash(session, infohash):
        if t.metadata_state != "complete":
            t.name, t.size, t.info, t.metadata_state = name, size, info, "complete"
            n += 1
    return n


class DuplicateStudy(RegistryError):
    """A study of that name exists (409)."""


def create_study(
    session: Session,
    name: str,
    *,
    description: str = "",
    k_threshold: int = 5,
    private: bool = False,
    titles: list[str] | None = None,
    owner_key_id: int | None = None,
) -> Study:
    """A new study, owned by the API key that asked for it (None: admin keys only).

    Its secret peer-key is made by the first pipeline that needs it, which holds the
    deployment secret to wrap it (swarmwatch.pipeline.anonymise): the API never does.
    """
    name = name.strip()
    existing = session.scalar(select(Study).where(Study.name == name))
    if existing is not None:
        raise DuplicateStudy(f"a study named {name!r} exists (id {existing.id})")
    study = Study(
        name=name,
        description=description,
        k_threshold=k_threshold,
        private=private,
        created_at=utcnow(),
        owner_key_id=owner_key_id,
    )
    session.add(study)
    session.flush()
    for title in dict.fromkeys(t.strip() for t in titles or () if t.strip()):
        session.add(Title(study_id=study.id, name=title))
    session.flush()
    session.refresh(study)
    return study
