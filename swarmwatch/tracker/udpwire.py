"""BEP 15 UDP tracker packets, both directions, and BEP 41 URL data options.

The client side (parse_*_response) raises TrackerResponseError; the server
side used by the simulated tracker (parse_request) raises MalformedRequest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from swarmwatch.tracker.client import ScrapeResult, ScrapeStats
from swarmwatch.tracker.exceptions import TrackerFailure, TrackerResponseError
from swarmwatch.tracker.peers import Peer, parse_compact_peers

#: BEP 15: the magic connection id of a connect request.
UDP_TRACKER_INIT_CONNECTION_ID = 0x41727101980
#: BEP 15 actions.
ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_SCRAPE = 2
ACTION_ERROR = 3
#: BEP 15: at most about 74 infohashes per scrape fit in one packet.
MAX_SCRAPE_HASHES = 74
#: BEP 41 option types.
OPTION_END = 0x0
OPTION_NOP = 0x1
OPTION_URL_DATA = 0x2

_CONNECT_REQ = struct.Struct(">QII")
_CONNECT_RESP = struct.Struct(">IIQ")
_ANNOUNCE_REQ = struct.Struct(">QII20s20sQQQIIIiH")  # 98 bytes (BEP 15)
_ANNOUNCE_RESP = struct.Struct(">IIIII")  # 20 bytes, then peers
_HEADER = struct.Struct(">II")  # action, transaction id
_SCRAPE_ENTRY = struct.Struct(">III")  # seeders, completed, leechers


class MalformedRequest(ValueError):
    """A UDP tracker request that does not parse (server side)."""


# --- client side: requests out, responses in ----------------------------------------


def encode_connect_request(transaction_id: int) -> bytes:
    return _CONNECT_REQ.pack(UDP_TRACKER_INIT_CONNECTION_ID, ACTION_CONNECT, transaction_id)


def url_data_options(path_and_query: str) -> bytes:
    """BEP 41: the URL's path and query as URLData options of at most 255 bytes each."""
    data = path_and_query.encode()
    out = bytearray()
    for off in range(0, len(data), 255):
        chunk = data[off : off + 255]
        out += bytes((OPTION_URL_DATA, len(chunk))) + chunk
    return bytes(out)


def encode_announce_request(
    connection_id: int,
    transaction_id: int,
    infohash: bytes,
    peer_id: bytes,
    *,
    left: int,
    event: int,
    key: int,
    numwant: int,
    port: int,
    url_data: str = "",
) -> bytes:
    packet = _ANNOUNCE_REQ.pack(
        connection_id,
        ACTION_ANNOUNCE,
        transaction_id,
        infohash,
        peer_id,
        0,
        left,
        0,
        event,
        0,  # ip: 0 = the sender's address
        key,
        numwant,
        port,
    )
    return packet + url_data_options(url_data) if url_data else packet


def encode_scrape_request(
    connection_id: int, transaction_id: int, infohashes: list[bytes]
) -> bytes:
    return _CONNECT_REQ.pack(connection_id, ACTION_SCRAPE, transaction_id) + b"".join(infohashes)


def _check_header(data: bytes, transaction_id: int, action: int, min_len: int) -> None:
    if len(data) < 8:
        raise TrackerResponseError("UDP response shorter than its header")
    got_action, got_tid = _HEADER.unpack_from(data)
    if got_tid != transaction_id:
        raise TrackerResponseError("UDP response has the wrong transaction id")
    if got_action == ACTION_ERROR:
        raise TrackerFailure(data[8:])
    if got_action != action:
        raise TrackerResponseError(f"UDP response action {got_action}, expected {action}")
    if len(data) < min_len:
        raise TrackerResponseError(f"UDP response of {len(data)} bytes, expected ≥ {min_len}")


#: Intervals are seconds; anything past a year is nonsense, not a schedule (as over HTTP).
MAX_INTERVAL_SECONDS = 365 * 24 * 3600


def parse_connect_response(data: bytes, transaction_id: int) -> int:
    """The connection id of a BEP 15 connect response."""
    _check_header(data, transaction_id, ACTION_CONNECT, _CONNECT_RESP.size)
    return int(_CONNECT_RESP.unpack_from(data)[2])


@dataclass(frozen=True, slots=True)
class UdpAnnounceResponse:
    interval: int
    leechers: int
    seeders: int
    peers: list[Peer] = field(repr=False)


def parse_announce_response(data: bytes, transaction_id: int, *, ipv6: bool) -> UdpAnnounceResponse:
    """BEP 15 announce response: 6-byte peers over IPv4, 18-byte over IPv6."""
    _check_header(data, transaction_id, ACTION_ANNOUNCE, _ANNOUNCE_RESP.size)
    _, _, interval, leechers, seeders = _ANNOUNCE_RESP.unpack_from(data)
    # BEP 15 sends int32 fields: a value with the top bit set is a negative number
    # (-1 is 0xFFFFFFFF), never a four-billion-second interval or a peer count.
    for name, value in (("interval", interval), ("leechers", leechers), ("seeders", seeders)):
        if value >= 1 << 31:
            raise TrackerResponseError(f"UDP announce {name} is negative")
    if interval > MAX_INTERVAL_SECONDS:
        raise TrackerResponseError("UDP announce interval longer than a year")
    peers = parse_compact_peers(data[_ANNOUNCE_RESP.size :], ipv6=ipv6)
    return UdpAnnounceResponse(interval, leechers, seeders, peers)


def parse_scrape_response(
    data: bytes, transaction_id: int, infohashes: list[bytes]
) -> ScrapeResult:
    _check_header(data, transaction_id, ACTION_SCRAPE, 8)
    body = data[8:]
    if len(body) != _SCRAPE_ENTRY.size * len(infohashes):
        raise TrackerResponseError("UDP scrape response length does not match the request")
    files = {}
    for i, ih in enumerate(infohashes):
        seeders, completed, leechers = _SCRAPE_ENTRY.unpack_from(body, i * _SCRAPE_ENTRY.size)
        files[ih] = ScrapeStats(complete=seeders, incomplete=leechers, downloaded=completed)
    return ScrapeResult(files)


# --- server side: requests in, responses out ---------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    transaction_id: int


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    connection_id: int
    transaction_id: int
    infohash: bytes
    peer_id: bytes = field(repr=False)
    left: int
    event: int
    key: int
    numwant: int
    port: int
    url_data: bytes = b""


@dataclass(frozen=True, slots=True)
class ScrapeRequest:
    connection_id: int
    transaction_id: int
    infohashes: list[bytes]


UdpRequest = ConnectRequest | AnnounceRequest | ScrapeRequest


def parse_url_data(options: bytes) -> bytes:
    """BEP 41: concatenate URLData options; stop at EndOfOptions or the packet's end."""
    out = bytearray()
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind == OPTION_END:
            break
        if kind == OPTION_NOP:
            pos += 1
            continue
        if pos + 1 >= len(options):
            raise MalformedRequest("option without a length")
        n = options[pos + 1]
        if pos + 2 + n > len(options):
            raise MalformedRequest("option runs past the packet")
        if kind == OPTION_URL_DATA:
            out += options[pos + 2 : pos + 2 + n]
        pos += 2 + n  # unknown options are skipped by length, as BEP 41 asks
    return bytes(out)


def parse_request(data: bytes) -> UdpRequest:
    if len(data) < 16:
        raise MalformedRequest("request shorter than 16 bytes")
    connection_id, action, tid = _CONNECT_REQ.unpack_from(data)
    if action == ACTION_CONNECT:
        if connection_id != UDP_TRACKER_INIT_CONNECTION_ID:
            raise MalformedRequest("connect without the protocol magic")
        return ConnectRequest(tid)
    if action == ACTION_ANNOUNCE:
        if len(data) < _ANNOUNCE_REQ.size:
            raise MalformedRequest("announce shorter than 98 bytes")
        f = _ANNOUNCE_REQ.unpack_from(data)
        return AnnounceRequest(
            connection_id=f[0],
            transaction_id=f[2],
            infohash=f[3],
            peer_id=f[4],
            left=f[6],
            event=f[8],
            key=f[10],
            numwant=f[11],
            port=f[12],
            url_data=parse_url_data(data[_ANNOUNCE_REQ.size :]),
        )
    if action == ACTION_SCRAPE:
        body = data[16:]
        if not body or len(body) % 20 or len(body) // 20 > MAX_SCRAPE_HASHES:
            raise MalformedRequest("scrape infohash list malformed")
        return ScrapeRequest(
            connection_id, tid, [body[i : i + 20] for i in range(0, len(body), 20)]
        )
    raise MalformedRequest(f"unknown action {action}")


def encode_connect_response(transaction_id: int, connection_id: int) -> bytes:
    return _CONNECT_RESP.pack(ACTION_CONNECT, transaction_id, connection_id)


def encode_announce_response(
    transaction_id: int, interval: int, leechers: int, seeders: int, compact_peers: bytes
) -> bytes:
    head = _ANNOUNCE_RESP.pack(ACTION_ANNOUNCE, transaction_id, interval, leechers, seeders)
    return head + compact_peers


def encode_scrape_response(transaction_id: int, stats: list[ScrapeStats]) -> bytes:
    body = b"".join(_SCRAPE_ENTRY.pack(s.complete, s.downloaded, s.incomplete) for s in stats)
    return _HEADER.pack(ACTION_SCRAPE, transaction_id) + body


def encode_error(transaction_id: int, message: bytes) -> bytes:
    return _HEADER.pack(ACTION_ERROR, transaction_id) + message


__all__ = [
    "ACTION_ANNOUNCE",
    "ACTION_CONNECT",
    "ACTION_ERROR",
    "ACTION_SCRAPE",
    "MAX_SCRAPE_HASHES",
    "UDP_TRACKER_INIT_CONNECTION_ID",
    "AnnounceRequest",
    "ConnectRequest",
    "MalformedRequest",
    "ScrapeRequest",
    "UdpAnnounceResponse",
    "UdpRequest",
    "encode_announce_request",
    "encode_announce_response",
    "encode_connect_request",
    "encode_connect_response",
    "encode_error",
    "encode_scrape_request",
    "encode_scrape_response",
    "parse_announce_response",
    "parse_connect_response",
    "parse_request",
    "parse_scrape_response",
    "parse_url_data",
    "url_data_options",
]
