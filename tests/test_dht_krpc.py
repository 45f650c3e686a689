"""KRPC wire format, compact parsers, BEP 42 ids and BEP 33 blooms: property tests of every
parser of untrusted bytes, and the spec's own test vectors."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch.bencode import encode
from swarmwatch.dht.bloom import ScrapeBloom
from swarmwatch.dht.crawler import dht_target, parse_bootstrap
from swarmwatch.dht.krpc import (
    COMPACT_NODE_V4_LENGTH,
    COMPACT_NODE_V6_LENGTH,
    MAX_VALUES_PER_REPLY,
    KrpcError,
    KrpcMessage,
    NodeInfo,
    compact_endpoint,
    compact_nodes,
    parse_compact_nodes,
    parse_compact_peer,
    parse_get_peers_reply,
    parse_message,
)
from swarmwatch.dht.nodeid import bep42_node_id, bep42_valid, crc32c, distance
from swarmwatch.dht.routing import RoutingTable

bencodable = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
node_ids = st.binary(min_size=20, max_size=20)
ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
ports = st.integers(1, 65535)


@given(st.binary(max_size=300))
def test_parse_message_raises_only_krpc_error_on_random_bytes(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except KrpcError:
        return
    assert isinstance(msg, KrpcMessage)


@given(bencodable)
def test_parse_message_raises_only_krpc_error_on_any_bencoded_value(value: object) -> None:
    try:
        msg = parse_message(encode(value))
    except KrpcError:
        return
    assert msg.kind in (b"q", b"r", b"e") and 0 < len(msg.tid) <= 16


@given(
    st.binary(min_size=1, max_size=4),
    st.sampled_from(["ping", "find_node", "get_peers", "announce_peer"]),
    node_ids,
    st.dictionaries(st.sampled_from([b"target", b"info_hash", b"port"]), bencodable, max_size=3),
    st.booleans(),
)
def test_query_round_trip(tid: bytes, method: str, node_id: bytes, extra: dict, ro: bool) -> None:
    wire = {"t": tid, "y": "q", "q": method, "a": {**extra, b"id": node_id}}
    if ro:
        wire["ro"] = 1
    msg = parse_message(encode(wire))
    assert (msg.tid, msg.query, msg.sender_id, msg.read_only) == (tid, method, node_id, ro)


@given(bencodable)
def test_get_peers_reply_never_raises_beyond_krpc_error(body: object) -> None:
    if isinstance(body, dict):
        body = {**body, b"id": b"x" * 20}
    try:
        msg = parse_message(encode({"t": b"aa", "y": "r", "r": body}))
        reply = parse_get_peers_reply(msg)
    except KrpcError:
        return
    assert len(reply.values) <= MAX_VALUES_PER_REPLY
    assert all(0 < port < 65536 for _, port in reply.values)


@given(st.binary(max_size=26 * 4 + 5), st.booleans())
def test_compact_nodes_length_rule(data: bytes, v6: bool) -> None:
    size = COMPACT_NODE_V6_LENGTH if v6 else COMPACT_NODE_V4_LENGTH
    try:
        nodes = parse_compact_nodes(data, v6=v6)
    except KrpcError:
        assert len(data) % size
        return
    assert len(data) % size == 0
    assert len(nodes) <= len(data) // size
    assert all(len(n.node_id) == 20 and n.port > 0 for n in nodes)


@given(st.lists(st.tuples(node_ids, ipv4 | ipv6, ports), max_size=10))
def test_compact_nodes_round_trip(items: list[tuple[bytes, str, int]]) -> None:
    nodes = [NodeInfo(i, ip, port) for i, ip, port in items]
    v4, v6 = compact_nodes(nodes)
    back = parse_compact_nodes(v4) + parse_compact_nodes(v6, v6=True)
    as_tuples = sorted((n.node_id, n.ip, n.port) for n in back)
    assert as_tuples == sorted((n.node_id, n.ip, n.port) for n in nodes)


@given(st.binary(max_size=20))
def test_compact_peer_accepts_only_6_or_18_bytes(data: bytes) -> None:
    try:
        ip, port = parse_compact_peer(data)
    except KrpcError:
        assert len(data) not in (6, 18) or data[-2:] == b"\0\0"
        return
    assert len(data) in (6, 18) and port > 0
    assert compact_endpoint(ip, port) == data


@given(ipv4 | ipv6, ports)
def test_compact_peer_round_trip(ip: str, port: int) -> None:
    assert parse_compact_peer(compact_endpoint(ip, port)) == (ip, port)


def test_hostile_get_peers_reply_is_trimmed_and_counted() -> None:
    good = [compact_endpoint("10.0.0.1", 1000 + i) for i in range(MAX_VALUES_PER_REPLY + 50)]
    body = {
        b"id": b"n" * 20,
        b"values": [b"short", b"x" * 7, *good],
        b"nodes": b"y" * 27,  # wrong length: not a multiple of 26
        b"nodes6": b"z" * 38,
        b"BFsd": b"too short",
        b"token": b"t" * 500,
    }
    reply = parse_get_peers_reply(parse_message(encode({"t": b"a", "y": "r", "r": body})))
    assert len(reply.values) == MAX_VALUES_PER_REPLY - 2
    assert reply.token is None and reply.bf_seeds is None
    assert len(reply.nodes) == 1 and reply.nodes[0].family == 6
    # 52 items beyond the cap, 2 bad values, bad nodes, bad BFsd, oversized token
    assert reply.bad_items == 52 + 2 + 1 + 1 + 1


@pytest.mark.parametrize(
    ("ip", "rand", "prefix"),
    [  # BEP 42 test vectors: the first 21 bits must match
        ("124.31.75.21", 1, "5fbfbf"),
        ("21.75.31.124", 86, "5a3ce9"),
        ("65.23.51.170", 22, "a5d432"),
        ("84.124.73.14", 65, "1b0321"),
        ("43.213.53.83", 90, "e56f6c"),
    ],
)
def test_bep42_vectors(ip: str, rand: int, prefix: str) -> None:
    node_id = bep42_node_id(ip, rand)
    expected = int(prefix, 16) >> 3
    assert int.from_bytes(node_id[:3], "big") >> 3 == expected
    assert node_id[-1] == rand and bep42_valid(node_id, ip)
    spec_id = bytes.fromhex(prefix) + bytes(16) + bytes([rand])
    assert bep42_valid(spec_id, ip)
    assert not bep42_valid(bytes([spec_id[0] ^ 0x80]) + spec_id[1:], ip)


def test_bep42_exempts_local_addresses_and_crc32c_check_value() -> None:
    assert bep42_valid(b"\0" * 20, "127.0.0.5") and bep42_valid(b"\0" * 20, "192.168.1.1")
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_bloom_estimate_tracks_count_and_union() -> None:
    rng = random.Random(5)
    ips = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(1500)]
    a, b = ScrapeBloom(), ScrapeBloom()
    for ip in ips[:1000]:
        a.add(ip)
    for ip in ips[500:]:
        b.add(ip)
    assert 900 < a.estimate() < 1100
    assert ScrapeBloom().estimate() == 0.0
    a.union(b)
    assert 1350 < a.estimate() < 1650  # union counts the 1500 distinct, not 2000
    with pytest.raises(ValueError):
        ScrapeBloom(b"x" * 10)


def test_bloom_matches_bep33_test_vector() -> None:
    # BEP 33's vector: 192.0.2.0-255 and 2001:db8::0-3e7 give an estimate of 1224.93.
    bloom = ScrapeBloom()
    for i in range(256):
        bloom.add(f"192.0.2.{i}")
    for i in range(0x3E8):
        bloom.add(str(ipaddress.IPv6Address("2001:db8::") + i))
    assert abs(bloom.estimate() - 1224.93) < 0.001
    assert (
        bloom.to_bytes()
        .hex()
        .startswith("f6c3f5eaa07ffd91bde89f777f26fb2bff37bdb8fb2bbaa2fd3ddde7bacfff75")
    )


def test_routing_table_keeps_k_per_bucket_and_orders_by_distance() -> None:
    rng = random.Random(1)
    own = bytes(20)
    table = RoutingTable(own)
    nodes = [NodeInfo(rng.randbytes(20), "127.0.0.2", 1000 + i) for i in range(300)]
    for n in nodes:
        table.add(n)
    assert len(table) < 300  # the far buckets filled up at K
    target = rng.randbytes(20)
    closest = table.closest(target, 8)
    assert [distance(n.node_id, target) for n in closest] == sorted(
        distance(n.node_id, target) for n in closest
    )
    victim = closest[0]
    table.mark_failed(victim)
    table.mark_failed(victim)
    assert victim not in list(table)


def test_bootstrap_spec_and_dht_target() -> None:
    assert parse_bootstrap("127.0.0.1:6881, [::1]:7000,") == [("127.0.0.1", 6881), ("::1", 7000)]
    with pytest.raises(ValueError):
        parse_bootstrap("127.0.0.1")
    assert dht_target("ab" * 32) == bytes.fromhex("ab" * 20)  # BEP 52 truncation
    with pytest.raises(ValueError):
        dht_target("ab" * 10)


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=16), st.integers(0, 300), st.binary(max_size=300))
def test_error_messages_parse(tid: bytes, code: int, text: bytes) -> None:
    msg = parse_message(encode({"t": tid, "y": "e", "e": [code, text]}))
    assert msg.error_code == code and len(msg.error_message or "") <= 200
