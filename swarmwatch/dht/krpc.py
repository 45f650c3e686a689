"""KRPC wire format of the Mainline DHT (BEP 5, 32, 33, 42, 43): parse and build messages.

Everything that comes off the socket goes through parse_message(); the only
exception it raises is KrpcError, which the protocol counts and drops.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

from swarmwatch.bencode import BencodeError, decode

#: BEP 5: node ids and infohashes are 160-bit strings.
NODE_ID_LENGTH = 20
#: BEP 5: compact node info, 20-byte id + 4-byte IPv4 + 2-byte port.
COMPACT_NODE_V4_LENGTH = 26
#: BEP 32: compact node info for IPv6, 20-byte id + 16-byte IPv6 + 2-byte port.
COMPACT_NODE_V6_LENGTH = 38
#: BEP 5: compact peer info, 4-byte IPv4 + 2-byte port.
COMPACT_PEER_V4_LENGTH = 6
#: BEP 32: compact peer info for IPv6.
COMPACT_PEER_V6_LENGTH = 18
#: BEP 33: BFsd and BFpe are 256-byte (2048-bit) bloom filters.
BLOOM_FILTER_LENGTH = 256

#: BEP 5 message types (key "y").
KRPC_QUERY = b"q"
KRPC_RESPONSE = b"r"
KRPC_ERROR = b"e"

#: BEP 5 error codes.
KRPC_ERROR_GENERIC = 201
KRPC_ERROR_SERVER = 202
KRPC_ERROR_PROTOCOL = 203
KRPC_ERROR_METHOD_UNKNOWN = 204

#: BEP 32: "want" values asking for IPv4 / IPv6 nodes.
WANT_N4 = b"n4"
WANT_N6 = b"n6"

#: A KRPC datagram above this is not Mainline traffic (real ones fit one MTU).
MAX_DATAGRAM_BYTES = 65_535
#: Bencoded values per datagram: a 64 KiB packet of 6-byte values is ~8 k items.
MAX_MESSAGE_ITEMS = 10_000
#: Values kept from one get_peers reply: libtorrent sends at most 100
#: (dht_max_peers_reply); more is a hostile or broken node, the rest is dropped.
MAX_VALUES_PER_REPLY = 1_000
#: Nodes kept from one reply: BEP 5 says K=8; a few dozen is already generous.
MAX_NODES_PER_REPLY = 64
#: Transaction ids are short opaque strings; refuse absurd ones.
MAX_TID_LENGTH = 16
#: Tokens are opaque but short (libtorrent: 4 bytes, others: 8-20).
MAX_TOKEN_LENGTH = 64


class KrpcError(ValueError):
    """A datagram is not a well-formed KRPC message (the one parse exception).

    The message describes the structural fault, never the sender's address.
    """


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A DHT node: id and UDP endpoint. Its address is never shown in a repr."""

    node_id: bytes
    ip: str = field(repr=False)
    port: int = field(repr=False)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4


@dataclass(frozen=True, slots=True)
class KrpcMessage:
    """One parsed KRPC message: a query, a response or an error (BEP 5)."""

    kind: bytes  # KRPC_QUERY, KRPC_RESPONSE or KRPC_ERROR
    tid: bytes
    query: str | None = None  # method name of a query
    body: dict[bytes, Any] = field(default_factory=dict)  # "a" of a query, "r" of a response
    error_code: int | None = None
    error_message: str | None = None
    read_only: bool = False  # BEP 43 "ro": 1 in a query

    @property
    def sender_id(self) -> bytes | None:
        node_id = self.body.get(b"id")
        return node_id if isinstance(node_id, bytes) else None


@dataclass(frozen=True, slots=True)
class GetPeersReply:
    """The useful part of a get_peers response (BEP 5, 32, 33)."""

    node_id: bytes
    token: bytes | None
    values: list[tuple[str, int]] = field(repr=False)
    nodes: list[NodeInfo] = field(repr=False)
    bf_seeds: bytes | None = None  # BEP 33 BFsd
    bf_peers: bytes | None = None  # BEP 33 BFpe
    bad_items: int = 0  # values/nodes skipped because malformed or beyond the caps


def parse_message(data: bytes) -> KrpcMessage:
    """Parse one datagram into a KrpcMessage, or raise KrpcError."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise KrpcError("datagram too large")
    try:
        msg = decode(data, max_depth=8, max_items=MAX_MESSAGE_ITEMS)
    except BencodeError as exc:
        raise KrpcError(f"not bencoded: {exc}") from None
    if not isinstance(msg, dict):
        raise KrpcError("message is not a dict")
    tid = msg.get(b"t")
    if not isinstance(tid, bytes) or not 0 < len(tid) <= MAX_TID_LENGTH:
        raise KrpcError("bad transaction id")
    kind = msg.get(b"y")
    if kind == KRPC_QUERY:
        method = msg.get(b"q")
        args = msg.get(b"a")
        if not isinstance(method, bytes) or not isinstance(args, dict):
            raise KrpcError("query without method or arguments")
        _check_id(args)
        try:
            name = method.decode("ascii")
        except UnicodeDecodeError:
            raise KrpcError("method name is not ascii") from None
        return KrpcMessage(KRPC_QUERY, tid, query=name, body=args, read_only=msg.get(b"ro") == 1)
    if kind == KRPC_RESPONSE:
        body = msg.get(b"r")
        if not isinstance(body, dict):
            raise KrpcError("response without body")
        _check_id(body)
        return KrpcMessage(KRPC_RESPONSE, tid, body=body)
    if kind == KRPC_ERROR:
        err = msg.get(b"e")
        if (
            not isinstance(err, list)
            or len(err) < 2
            or not isinstance(err[0], int)
            or not isinstance(err[1], bytes)
        ):
            raise KrpcError("malformed error")
        return KrpcMessage(
            KRPC_ERROR,
            tid,
            error_code=err[0],
            error_message=err[1][:200].decode("utf-8", "replace"),
        )
    raise KrpcError("unknown message type")


def _check_id(body: dict[bytes, Any]) -> None:
    node_id = body.get(b"id")
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_LENGTH:
        raise KrpcError("missing or malformed node id")


def parse_compact_nodes(data: bytes, *, v6: bool = False) -> list[NodeInfo]:
    """Split a BEP 5 "nodes" (or BEP 32 "nodes6") string into NodeInfos.

    A length that is not a multiple of the record size is a KrpcError; a
    record with port 0 is skipped (it cannot be contacted).
    """
    size = COMPACT_NODE_V6_LENGTH if v6 else COMPACT_NODE_V4_LENGTH
    if not isinstance(data, bytes) or len(data) % size:
        raise KrpcError("compact node list has a wrong length")
    out: list[NodeInfo] = []
    for off in range(0, len(data), size):
        rec = data[off : off + size]
        ip, port = _unpack_endpoint(rec[NODE_ID_LENGTH:])
        if port:
            out.append(NodeInfo(rec[:NODE_ID_LENGTH], ip, port))
    return out


def parse_compact_peer(data: bytes) -> tuple[str, int]:
    """One BEP 5/32 compact peer (6 or 18 bytes) as (ip, port); KrpcError otherwise."""
    if not isinstance(data, bytes) or len(data) not in (
        COMPACT_PEER_V4_LENGTH,
        COMPACT_PEER_V6_LENGTH,
    ):
        raise KrpcError("compact peer has a wrong length")
    ip, port = _unpack_endpoint(data)
    if port == 0:
        raise KrpcError("compact peer has port 0")
    return ip, port


def _unpack_endpoint(raw: bytes) -> tuple[str, int]:
    (port,) = struct.unpack("!H", raw[-2:])
    return str(ipaddress.ip_address(raw[:-2])), port


def compact_endpoint(ip: str, port: int) -> bytes:
    """BEP 5/32 compact form of an endpoint (also BEP 42's "ip" field)."""
    return ipaddress.ip_address(ip).packed + struct.pack("!H", port)


def compact_nodes(nodes: list[NodeInfo]) -> tuple[bytes, bytes]:
    """Encode nodes as ("nodes", "nodes6") strings, split by address family."""
    v4 = b"".join(n.node_id + compact_endpoint(n.ip, n.port) for n in nodes if n.family == 4)
    v6 = b"".join(n.node_id + compact_endpoint(n.ip, n.port) for n in nodes if n.family == 6)
    return v4, v6


def parse_get_peers_reply(msg: KrpcMessage) -> GetPeersReply:
    """Interpret a response body as a get_peers reply.

    Malformed values or node strings are skipped and counted in bad_items (a
    node that sends one bad value may still send useful ones); values and
    nodes beyond MAX_VALUES_PER_REPLY / MAX_NODES_PER_REPLY are dropped too.
    """
    body = msg.body
    node_id = msg.sender_id
    if node_id is None:
        raise KrpcError("response without node id")
    bad = 0
    token = body.get(b"token")
    if not isinstance(token, bytes) or len(token) > MAX_TOKEN_LENGTH:
        bad += token is not None
        token = None
    values: list[tuple[str, int]] = []
    raw_values = body.get(b"values")
    if raw_values is not None:
        if not isinstance(raw_values, list):
            bad += 1
            raw_values = []
        if len(raw_values) > MAX_VALUES_PER_REPLY:
            bad += len(raw_values) - MAX_VALUES_PER_REPLY
            raw_values = raw_values[:MAX_VALUES_PER_REPLY]
        for raw in raw_values:
            try:
                values.append(parse_compact_peer(raw))
            except KrpcError:
                bad += 1
    nodes: list[NodeInfo] = []
    for key, v6 in ((b"nodes", False), (b"nodes6", True)):
        raw_nodes = body.get(key)
        if raw_nodes is None:
            continue
        try:
            parsed = parse_compact_nodes(raw_nodes, v6=v6)
        except KrpcError:
            bad += 1
            continue
        if len(parsed) > MAX_NODES_PER_REPLY:
            bad += len(parsed) - MAX_NODES_PER_REPLY
            parsed = parsed[:MAX_NODES_PER_REPLY]
        nodes.extend(parsed)
    bf_seeds = _bloom(body.get(b"BFsd"))
    bf_peers = _bloom(body.get(b"BFpe"))
    bad += (b"BFsd" in body and bf_seeds is None) + (b"BFpe" in body and bf_peers is None)
    return GetPeersReply(node_id, token, values, nodes, bf_seeds, bf_peers, bad)


def _bloom(raw: Any) -> bytes | None:
    if isinstance(raw, bytes) and len(raw) == BLOOM_FILTER_LENGTH:
        return raw
    return None


def parse_nodes_reply(msg: KrpcMessage) -> list[NodeInfo]:
    """The nodes of a find_node reply (BEP 5) or get_peers reply, skipping bad strings."""
    return parse_get_peers_reply(msg).nodes


__all__ = [
    "BLOOM_FILTER_LENGTH",
    "COMPACT_NODE_V4_LENGTH",
    "COMPACT_NODE_V6_LENGTH",
    "COMPACT_PEER_V4_LENGTH",
    "COMPACT_PEER_V6_LENGTH",
    "KRPC_ERROR",
    "KRPC_ERROR_GENERIC",
    "KRPC_ERROR_METHOD_UNKNOWN",
    "KRPC_ERROR_PROTOCOL",
    "KRPC_ERROR_SERVER",
    "KRPC_QUERY",
    "KRPC_RESPONSE",
    "MAX_VALUES_PER_REPLY",
    "NODE_ID_LENGTH",
    "WANT_N4",
    "WANT_N6",
    "GetPeersReply",
    "KrpcError",
    "KrpcMessage",
    "NodeInfo",
    "compact_endpoint",
    "compact_nodes",
    "parse_compact_nodes",
    "parse_compact_peer",
    "parse_get_peers_reply",
    "parse_message",
    "parse_nodes_reply",
]
