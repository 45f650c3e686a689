"""Property tests: every tracker parser either parses or raises its one documented error."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch import bencode
from swarmwatch.tracker import udpwire
from swarmwatch.tracker.exceptions import (
    TrackerFailure,
    TrackerResponseError,
    scrub_message,
)
from swarmwatch.tracker.http import parse_announce_response, parse_scrape_response, scrape_url
from swarmwatch.tracker.peers import (
    encode_compact_peers,
    parse_compact_peers,
    parse_dict_peers,
)

PARSE_ERRORS = (TrackerResponseError, TrackerFailure)

v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)

# Bencodable values of every shape a hostile tracker could send.
bvalues = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=15), children, max_size=5)
    ),
    max_leaves=20,
)
KEYS = [
    b"interval",
    b"min interval",
    b"peers",
    b"peers6",
    b"complete",
    b"incomplete",
    b"failure reason",
    b"warning message",
    b"tracker id",
    b"files",
    b"external ip",
]
announce_like = st.dictionaries(st.sampled_from(KEYS), bvalues | st.binary(max_size=60), max_size=8)


@given(st.lists(st.tuples(v4, ports), max_size=50))
def test_compact_v4_roundtrip(peers: list[tuple[ipaddress.IPv4Address, int]]) -> None:
    assert parse_compact_peers(encode_compact_peers(peers)) == peers


@given(st.lists(st.tuples(v6, ports), max_size=50))
def test_compact_v6_roundtrip(peers: list[tuple[ipaddress.IPv6Address, int]]) -> None:
    assert parse_compact_peers(encode_compact_peers(peers, ipv6=True), ipv6=True) == peers


@given(st.binary(max_size=200), st.booleans())
def test_compact_any_bytes(data: bytes, ipv6: bool) -> None:
    size = 18 if ipv6 else 6
    if len(data) % size:
        with pytest.raises(TrackerResponseError):
            parse_compact_peers(data, ipv6=ipv6)
    else:
        assert len(parse_compact_peers(data, ipv6=ipv6)) == len(data) // size


@given(bvalues)
def test_dict_peers_any_value(value: object) -> None:
    try:
        peers, skipped = parse_dict_peers(value)
    except TrackerResponseError:
        return
    assert all(0 <= port <= 65535 for _, port in peers) and skipped >= 0


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_announce_response_garbage(data: bytes) -> None:
    try:
        parse_announce_response(data)
    except PARSE_ERRORS:
        pass


@given(announce_like)
@settings(max_examples=400)
def test_announce_response_hostile_dicts(d: dict[bytes, object]) -> None:
    try:
        result = parse_announce_response(bencode.encode(d))
    except PARSE_ERRORS:
        return
    assert result.interval >= 0
    assert all(port != 0 for _, port in result.peers)


@given(
    st.integers(0, 10**6),
    st.one_of(st.none(), st.integers(0, 10**6)),
    st.lists(st.tuples(v4, st.integers(1, 65535)), max_size=30),
    st.lists(st.tuples(v6, st.integers(1, 65535)), max_size=30),
    st.booleans(),
)
def test_announce_response_valid(
    interval: int,
    min_interval: int | None,
    p4: list[tuple[ipaddress.IPv4Address, int]],
    p6: list[tuple[ipaddress.IPv6Address, int]],
    compact: bool,
) -> None:
    d: dict[str, object] = {"interval": interval, "complete": 3, "incomplete": 4}
    if min_interval is not None:
        d["min interval"] = min_interval
    if compact:
        d["peers"] = encode_compact_peers(p4)
        d["peers6"] = encode_compact_peers(p6, ipv6=True)
    else:
        d["peers"] = [{"ip": str(ip), "port": port, "peer id": b"x" * 20} for ip, port in p4 + p6]
    r = parse_announce_response(bencode.encode(d))
    assert (r.interval, r.min_interval, r.seeders, r.leechers) == (interval, min_interval, 3, 4)
    assert sorted(r.peers, key=str) == sorted(p4 + p6, key=str)


@given(st.binary(max_size=20) | bvalues)
def test_bep24_external_ip_any_value(value: object) -> None:
    """Our address as the tracker saw it: 4 or 16 packed bytes, anything else ignored."""
    result = parse_announce_response(bencode.encode({b"interval": 60, b"external ip": value}))
    if isinstance(value, bytes) and len(value) in (4, 16):
        assert result.external_ip == ipaddress.ip_address(value)
    else:
        assert result.external_ip is None
    assert "external" not in repr(result)  # hidden like the peers: it is an address


def test_dict_peer_hostnames_are_skipped_not_resolved() -> None:
    body = bencode.encode({"interval": 60, "peers": [{"ip": "tracker.example", "port": 1}]})
    r = parse_announce_response(body)
    assert r.peers == () and r.skipped == 1


def test_failure_reason_is_scrubbed_of_addresses() -> None:
    body = bencode.encode({"failure reason": "banned 203.0.113.9 and 2001:db8::7 \x00"})
    with pytest.raises(TrackerFailure) as e:
        parse_announce_response(body)
    assert "203.0.113.9" not in str(e.value) and "2001:db8::7" not in str(e.value)
    assert "\x00" not in str(e.value)


@given(st.text(max_size=500) | st.binary(max_size=500))
def test_scrub_message_bounded(text: str | bytes) -> None:
    out = scrub_message(text)
    assert len(out) <= 200 and out.isprintable()


@given(st.binary(max_size=300) | announce_like.map(bencode.encode))
def test_scrape_response_garbage(data: bytes) -> None:
    try:
        parse_scrape_response(data)
    except PARSE_ERRORS:
        pass


@given(
    st.dictionaries(st.binary(min_size=20, max_size=20), st.tuples(*[st.integers(0, 2**31)] * 3))
)
def test_scrape_response_valid(files: dict[bytes, tuple[int, int, int]]) -> None:
    body = bencode.encode(
        {
            "files": {
                ih: {"complete": c, "incomplete": i, "downloaded": d}
                for ih, (c, i, d) in files.items()
            }
        }
    )
    r = parse_scrape_response(body)
    assert {ih: (s.complete, s.incomplete, s.downloaded) for ih, s in r.files.items()} == files


def test_scrape_url_bep48() -> None:
    assert scrape_url("http://t.example/announce") == "http://t.example/scrape"
    assert scrape_url("http://t.example/x/announce.php?k=1") == "http://t.example/x/scrape.php?k=1"
    assert scrape_url("http://t.example/a") is None


# --- UDP (BEP 15) ---------------------------------------------------------------------


@given(st.binary(max_size=120), st.integers(0, 2**32 - 1))
@settings(max_examples=300)
def test_udp_responses_garbage(data: bytes, tid: int) -> None:
    for parse in (
        lambda: udpwire.parse_connect_response(data, tid),
        lambda: udpwire.parse_announce_response(data, tid, ipv6=False),
        lambda: udpwire.parse_announce_response(data, tid, ipv6=True),
        lambda: udpwire.parse_scrape_response(data, tid, [b"a" * 20]),
    ):
        try:
            parse()
        except PARSE_ERRORS:
            pass


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_udp_connect_roundtrip_and_wrong_tid(tid: int, other: int, conn: int) -> None:
    resp = udpwire.encode_connect_response(tid, conn)
    assert udpwire.parse_connect_response(resp, tid) == conn
    if other != tid:
        with pytest.raises(TrackerResponseError):
            udpwire.parse_connect_response(resp, other)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, udpwire.MAX_INTERVAL_SECONDS),
    st.lists(st.tuples(v4, ports), max_size=40),
    st.binary(max_size=17),
)
def test_udp_announce_roundtrip_and_bad_lengths(
    tid: int, interval: int, peers: list[tuple[ipaddress.IPv4Address, int]], junk: bytes
) -> None:
    resp = udpwire.encode_announce_response(tid, interval, 5, 6, encode_compact_peers(peers))
    r = udpwire.parse_announce_response(resp, tid, ipv6=False)
    assert (r.interval, r.leechers, r.seeders, r.peers) == (interval, 5, 6, peers)
    if len(junk) % 6:
        with pytest.raises(TrackerResponseError):
            udpwire.parse_announce_response(resp + junk, tid, ipv6=False)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_udp_announce_fields_are_validated_as_int32(
    interval: int, leechers: int, seeders: int
) -> None:
    """BEP 15 fields are int32: -1 (0xFFFFFFFF) is refused, never a 136-year interval."""
    resp = udpwire.encode_announce_response(1, interval, leechers, seeders, b"")
    negative = max(interval, leechers, seeders) >= 2**31
    if negative or interval > udpwire.MAX_INTERVAL_SECONDS:
        with pytest.raises(TrackerResponseError):
            udpwire.parse_announce_response(resp, 1, ipv6=False)
    else:
        r = udpwire.parse_announce_response(resp, 1, ipv6=False)
        assert (r.interval, r.leechers, r.seeders) == (interval, leechers, seeders)


def test_udp_interval_minus_one_is_refused() -> None:
    resp = udpwire.encode_announce_response(9, 2**32 - 1, 0, 0, b"")  # -1 as the wire has it
    with pytest.raises(TrackerResponseError, match="negative"):
        udpwire.parse_announce_response(resp, 9, ipv6=False)


def test_udp_error_packet_is_a_failure() -> None:
    with pytest.raises(TrackerFailure, match="nope"):
        udpwire.parse_announce_response(udpwire.encode_error(7, b"nope"), 7, ipv6=False)


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_udp_requests_garbage(data: bytes) -> None:
    try:
        udpwire.parse_request(data)
    except udpwire.MalformedRequest:
        pass


@given(st.text(max_size=700), st.binary(min_size=20, max_size=20), st.integers(-1, 2**31 - 1))
def test_udp_announce_request_roundtrip_with_bep41(path: str, ih: bytes, numwant: int) -> None:
    packet = udpwire.encode_announce_request(
        5, 9, ih, b"p" * 20, left=1, event=2, key=77, numwant=numwant, port=6881, url_data=path
    )
    req = udpwire.parse_request(packet)
    assert isinstance(req, udpwire.AnnounceRequest)
    assert (req.infohash, req.numwant, req.key, req.event) == (ih, numwant, 77, 2)
    assert req.url_data == path.encode()


@given(st.binary(max_size=100))
def test_bep41_options_garbage(options: bytes) -> None:
    try:
        udpwire.parse_url_data(options)
    except udpwire.MalformedRequest:
        pass
