"""HTTP(S) tracker client: BEP 3 announce, BEP 23 compact, BEP 7 peers6, BEP 48 scrape.

Responses are read as a stream and cut off at MAX_RESPONSE_BYTES; redirects are
not followed and proxies from the environment are ignored, so a request goes to
exactly the host that passed netsafety.check_destination.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit, urlunsplit

import httpx

from swarmwatch import bencode
from swarmwatch.config import get_settings
from swarmwatch.netsafety import check_destination
from swarmwatch.sightings import IPAddress
from swarmwatch.tracker.client import (
    MAX_NUMWANT,
    AnnounceResult,
    CrawlIdentity,
    Event,
    ScrapeResult,
    ScrapeStats,
)
from swarmwatch.tracker.exceptions import (
    TrackerFailure,
    TrackerResponseError,
    TrackerTimeout,
    TrackerUnreachable,
    scrub_message,
)
from swarmwatch.tracker.peers import parse_compact_peers, parse_dict_peers

log = logging.getLogger(__name__)

#: Same cap as libtorrent's tracker_maximum_response_length: 1 MiB.
MAX_RESPONSE_BYTES = 1024 * 1024
#: Intervals are seconds in an int; anything past a year is nonsense, not a schedule.
MAX_INTERVAL_SECONDS = 365 * 24 * 3600
_INFOHASH_LEN = 20


def _int_field(d: dict[bytes, Any], key: bytes, *, required: bool = False) -> int | None:
    value = d.get(key)
    if value is None:
        if required:
            raise TrackerResponseError(f"missing {key.decode()!r}")
        return None
    if not isinstance(value, int) or value < 0 or value > MAX_INTERVAL_SECONDS * 1000:
        raise TrackerResponseError(f"{key.decode()!r} is not a sane non-negative integer")
    return value


def parse_announce_response(body: bytes) -> AnnounceResult:
    """Decode an HTTP announce answer (BEP 3/23/7); TrackerFailure on a failure reason."""
    try:
        d = bencode.decode(body)
    except bencode.BencodeError as e:
        raise TrackerResponseError(f"announce response is not bencode: {e}") from None
    if not isinstance(d, dict):
        raise TrackerResponseError("announce response is not a dict")
    failure = d.get(b"failure reason")
    if failure is not None:
        raise TrackerFailure(failure if isinstance(failure, bytes) else str(failure))
    interval = _int_field(d, b"interval", required=True)
    assert interval is not None
    if interval > MAX_INTERVAL_SECONDS:
        raise TrackerResponseError("interval longer than a year")
    min_interval = _int_field(d, b"min interval")
    if min_interval is not None and min_interval > MAX_INTERVAL_SECONDS:
        raise TrackerResponseError("min interval longer than a year")
    raw = d.get(b"peers", b"")
    skipped = 0
    if isinstance(raw, bytes):
        peers = parse_compact_peers(raw)
    else:
        peers, skipped = parse_dict_peers(raw)
    raw6 = d.get(b"peers6")
    if raw6 is not None:
        if not isinstance(raw6, bytes):
            raise TrackerResponseError("peers6 is not a string")
        peers += parse_compact_peers(raw6, ipv6=True)
    usable = [(ip, port) for ip, port in peers if port != 0]
    warning = d.get(b"warning message")
    tracker_id = d.get(b"tracker id")
    return AnnounceResult(
        external_ip=_external_ip(d.get(b"external ip")),
        interval=interval,
        min_interval=min_interval,
        seeders=_int_field(d, b"complete"),
        leechers=_int_field(d, b"incomplete"),
        peers=tuple(usable),
        warning=scrub_message(warning) if isinstance(warning, bytes) else None,
        tracker_id=tracker_id if isinstance(tracker_id, bytes) and len(tracker_id) < 256 else None,
        skipped=skipped + len(peers) - len(usable),
    )


def _external_ip(raw: object) -> IPAddress | None:
    """BEP 24: our address as the tracker saw it, 4 or 16 packed bytes; else ignored."""
    if isinstance(raw, bytes) and len(raw) in (4, 16):
        return ipaddress.ip_address(raw)
    return None


def parse_scrape_response(body: bytes) -> ScrapeResult:
    """Decode an HTTP scrape answer (BEP 48)."""
    try:
        d = bencode.decode(body)
    except bencode.BencodeError as e:
        raise TrackerResponseError(f"scrape response is not bencode: {e}") from None
    if not isinstance(d, dict):
        raise TrackerResponseError("scrape response is not a dict")
    failure = d.get(b"failure reason")
    if failure is not None:
        raise TrackerFailure(failure if isinstance(failure, bytes) else str(failure))
    files = d.get(b"files")
    if not isinstance(files, dict):
        raise TrackerResponseError("scrape response has no files dict")
    out: dict[bytes, ScrapeStats] = {}
    for ih, stats in files.items():
        if len(ih) != _INFOHASH_LEN or not isinstance(stats, dict):
            raise TrackerResponseError("scrape entry malformed")
        complete = _int_field(stats, b"complete") or 0
        incomplete = _int_field(stats, b"incomplete") or 0
        downloaded = _int_field(stats, b"downloaded") or 0
        out[ih] = ScrapeStats(complete, incomplete, downloaded)
    return ScrapeResult(out)


def scrape_url(announce_url: str) -> str | None:
    """BEP 48: the scrape URL, or None when the announce URL's last segment isn't 'announce…'."""
    parts = urlsplit(announce_url)
    head, _, last = parts.path.rpartition("/")
    if not last.startswith("announce"):
        return None
    return urlunsplit(parts._replace(path=f"{head}/scrape{last[len('announce') :]}"))


def _local_ip(response: httpx.Response) -> IPAddress | None:
    stream = response.extensions.get("network_stream")
    try:
        addr = stream.get_extra_info("client_addr") if stream is not None else None
        return ipaddress.ip_address(addr[0]) if addr else None
    except (ValueError, TypeError, IndexError):
        return None


def _with_query(url: str, query: str) -> str:
    # Private trackers put a passkey in the announce URL's own query: keep it.
    return f"{url}{'&' if '?' in url else '?'}{query}"


def announce_query(
    infohash: bytes, identity: CrawlIdentity, *, numwant: int, event: Event, left: int
) -> str:
    params = [
        ("info_hash", quote_from_bytes(infohash, safe="")),
        ("peer_id", quote_from_bytes(identity.peer_id, safe="")),
        ("port", str(identity.port)),
        ("uploaded", "0"),
        ("downloaded", "0"),
        # left > 0 says "leecher", so trackers include seeders in the answer.
        ("left", str(left)),
        ("compact", "1"),
        ("no_peer_id", "1"),
        ("numwant", str(max(0, min(numwant, MAX_NUMWANT)))),
        ("key", f"{identity.key:08x}"),
    ]
    if event is not Event.NONE:
        params.append(("event", event.http_name))
    return "&".join(f"{k}={v}" for k, v in params)


class HttpTrackerClient:
    """TrackerClient for http:// and https:// announce URLs (asyncio, httpx)."""

    def __init__(
        self,
        *,
        timeout: float | None = None,
        loopback_only: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        settings = get_settings()
        self.loopback_only = settings.loopback_only if loopback_only is None else loopback_only
        self.max_response_bytes = max_response_bytes
        self.deadline = timeout or settings.tracker_timeout
        self._client = httpx.AsyncClient(
            timeout=timeout or settings.tracker_timeout,
            follow_redirects=False,  # a redirect could lead off loopback, past the check
            trust_env=False,  # an environment proxy would be an unchecked destination
            transport=transport,
            headers={"User-Agent": "swarmwatch/0.1", "Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, url: str) -> tuple[bytes, IPAddress | None]:
        """The body, and the local address it came to; the deadline covers the whole request.

        httpx's timeout applies per read: a tracker trickling a byte every few seconds
        would hold an announce slot for good. asyncio.timeout bounds connect, headers
        and body together.
        """
        host = urlsplit(url).hostname or ""
        check_destination(host, loopback_only=self.loopback_only, what="tracker")
        try:
            async with asyncio.timeout(self.deadline):
                return await self._fetch(url)
        except TimeoutError:
            raise TrackerTimeout("HTTP tracker did not answer within the deadline") from None

    async def _fetch(self, url: str) -> tuple[bytes, IPAddress | None]:
        try:
            async with self._client.stream("GET", url) as response:
                local = _local_ip(response)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise TrackerResponseError("response exceeds the 1 MiB cap")
                    chunks.append(chunk)
                body = b"".join(chunks)
                if response.status_code != 200 and b"failure reason" not in body:
                    raise TrackerResponseError(f"HTTP status {response.status_code}")
                return body, local
        except httpx.TimeoutException:
            raise TrackerTimeout("HTTP tracker timed out") from None
        except httpx.HTTPError as e:
            raise TrackerUnreachable(f"HTTP tracker unreachable: {type(e).__name__}") from None

    async def announce(
        self,
        url: str,
        infohash: bytes,
        identity: CrawlIdentity,
        *,
        numwant: int = 200,
        event: Event = Event.NONE,
        left: int = 1,
    ) -> AnnounceResult:
        query = announce_query(infohash, identity, numwant=numwant, event=event, left=left)
        body, local = await self._get(_with_query(url, query))
        return dataclasses.replace(parse_announce_response(body), local_ip=local)

    async def scrape(self, url: str, infohashes: Sequence[bytes]) -> ScrapeResult:
        target = scrape_url(url)
        if target is None:
            raise TrackerUnreachable("tracker URL does not support scrape (BEP 48)")
        query = "&".join(f"info_hash={quote_from_bytes(ih, safe='')}" for ih in infohashes)
        body, _ = await self._get(_with_query(target, query))
        return parse_scrape_response(body)


__all__ = [
    "MAX_RESPONSE_BYTES",
    "HttpTrackerClient",
    "announce_query",
    "parse_announce_response",
    "parse_scrape_response",
    "scrape_url",
]
