"""The crawler is never its own peer (issue 14): own endpoints are dropped, in one worker
and across workers sharing a database, and nothing about them is stored as an address."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from swarmwatch.config import get_settings
from swarmwatch.ownendpoints import (
    ExcludeOwnSink,
    OwnEndpoints,
    crawl_endpoint,
    endpoint_digest,
    withdraw,
)
from swarmwatch.service import CrawlService
from swarmwatch.sightings import MemorySink, PeerSighting, Source
from swarmwatch.store import Database
from tests.test_privacy_scan import forms

IH = "0123456789abcdef0123456789abcdef01234567"
NOW = datetime(2026, 12, 5, tzinfo=UTC)


def _sighting(ip: str, port: int) -> PeerSighting:
    return PeerSighting(IH, ipaddress.ip_address(ip), port, Source.TRACKER, "v", NOW)


def _filtered(own: OwnEndpoints, items: list[PeerSighting]) -> MemorySink:
    inner = MemorySink()
    sink = ExcludeOwnSink(inner, own)

    async def run() -> None:
        for item in items:
            await sink.put(item)

    asyncio.run(run())
    return inner


def test_own_address_and_port_are_dropped_other_peers_kept() -> None:
    own = OwnEndpoints()
    own.add_port(6881)  # a tracker identity's announced port
    own.add("127.0.0.1", 40000)  # the libtorrent listen endpoint
    own.add_address("203.0.113.9")  # BEP 24 external ip
    items = [
        _sighting("127.0.0.1", 6881),  # opentracker listing the requester itself
        _sighting("127.0.0.1", 40000),
        _sighting("203.0.113.9", 40000),  # our listen port at our external address
        _sighting("::ffff:127.0.0.1", 6881),  # the same, from a dual-stack socket
        _sighting("127.0.0.1", 51413),  # a real peer behind our address, another port
        _sighting("127.0.0.2", 6881),  # a real peer at our port number, another address
    ]
    kept = _filtered(own, items)
    assert [(str(s.ip), s.port) for s in kept.sightings] == [
        ("127.0.0.1", 51413),
        ("127.0.0.2", 6881),
    ]
    assert own.excluded == 4


def test_unspecified_and_garbage_addresses_are_not_ours() -> None:
    own = OwnEndpoints()
    own.add("0.0.0.0", 6881)
    own.add_address("not an address")
    assert not own.is_own(ipaddress.ip_address("0.0.0.0"), 6881)
    assert not own.is_own(ipaddress.ip_address("127.0.0.1"), 6881)


def test_sibling_workers_exclude_each_other_through_the_database(db: Database) -> None:
    """Worker A's endpoint reaches worker B through a tracker: B drops it too."""
    a, b = OwnEndpoints(), OwnEndpoints()
    a.add("198.51.100.7", 6881)
    b.add("192.0.2.44", 6881)
    with db.session() as s:
        a.exchange(s, "worker-a", ttl_seconds=45, now=NOW)
    with db.session() as s:
        b.exchange(s, "worker-b", ttl_seconds=45, now=NOW)
    # B learnt A's (and its own) digests; A learns B's at its next heartbeat.
    assert b.is_own(ipaddress.ip_address("198.51.100.7"), 6881)
    assert not a.is_own(ipaddress.ip_address("192.0.2.44"), 6881)
    with db.session() as s:
        a.exchange(s, "worker-a", ttl_seconds=45, now=NOW + timedelta(seconds=1))
    assert a.is_own(ipaddress.ip_address("192.0.2.44"), 6881)
    assert not a.is_own(ipaddress.ip_address("192.0.2.44"), 6882)
    # A worker that stops renewing is forgotten once its rows expire; one that shuts
    # down cleanly withdraws at once.
    with db.session() as s:
        b.exchange(s, "worker-b", ttl_seconds=45, now=NOW + timedelta(seconds=60))
    assert not b.is_own(ipaddress.ip_address("198.51.100.7"), 6881)
    with db.session() as s:
        withdraw(s, "worker-b")
        assert s.scalars(select(crawl_endpoint.c.worker_id)).all() == []


def test_no_address_is_stored_for_the_exchange(db: Database) -> None:
    own = OwnEndpoints()
    own.add("198.51.100.7", 6881)
    with db.session() as s:
        own.exchange(s, "worker-a", ttl_seconds=45, now=NOW)
    with db.session() as s:
        digests = [bytes(d) for d in s.scalars(select(crawl_endpoint.c.digest))]
    address = ipaddress.ip_address("198.51.100.7")
    assert len(digests) == 1 and len(digests[0]) == 16
    assert address.packed not in digests[0]
    assert b"198.51.100.7" not in digests[0]


@given(st.ip_addresses(), st.integers(1, 65535), st.binary(min_size=32, max_size=32))
def test_digest_is_the_same_for_mapped_and_plain_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, key: bytes
) -> None:
    digest = endpoint_digest(key, ip, port)
    assert len(digest) == 16
    if ip.version == 4:
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        assert endpoint_digest(key, mapped, port) == digest
    assert endpoint_digest(key, ip, port % 65535 + 1) != digest


def test_a_crawl_service_exchange_leaves_no_address_in_the_database_or_logs(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's endpoint exchange, for real: database bytes and DEBUG logs scanned
    for the crawler's addresses in text and packed form (tests/test_privacy_scan.py)."""
    if not db_url.startswith("sqlite:///"):
        pytest.skip("scans the SQLite file's bytes")
    caplog.set_level(logging.DEBUG)
    ours = ["198.51.100.7", "2001:db8::77"]
    db = Database(db_url)
    db.upgrade()
    service = CrawlService(get_settings(), db, crawlers=[], use_leases=False)
    for text in ours:
        service.own.add(text, 6881)
    assert asyncio.run(service.exchange_endpoints()) == 2
    service._release()
    db.dispose()
    blobs = {"log": caplog.text.encode()}
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = Path(db_url.removeprefix("sqlite:///") + suffix)
        if f.exists():
            blobs[f.name] = f.read_bytes()
    for where, blob in blobs.items():
        for text in ours:
            for form in forms(text):
                assert form not in blob, f"{text} found in {where}"
