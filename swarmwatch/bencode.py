"""Bencoding (BEP 3) with the bounds untrusted input needs.

decode() accepts only canonical-enough, complete input: one value, nothing
after it, nesting at most MAX_DEPTH, at most max_items values in all. Every
failure is a BencodeError, the one exception a caller of decode() catches.
"""

from __future__ import annotations

from typing import Any

#: libtorrent refuses nesting deeper than 100; real tracker and KRPC answers use < 6.
MAX_DEPTH = 64
#: Values per message: 1 MiB of compact peers is ~175 k; a million items is plenty.
MAX_ITEMS = 1_000_000

Bencodable = int | bytes | str | list[Any] | dict[Any, Any]


class BencodeError(ValueError):
    """The bytes are not one well-formed bencoded value within the bounds."""


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Any:
    """Decode one bencoded value; dict keys and strings stay bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BencodeError("expected bytes")
    buf = bytes(data)
    decoder = _Decoder(buf, max_depth, max_items)
    value = decoder.value(0)
    if decoder.pos != len(buf):
        raise BencodeError(f"trailing data at offset {decoder.pos}")
    return value


def decode_prefix(data: bytes, *, max_depth: int = MAX_DEPTH) -> tuple[Any, int]:
    """Decode the value at the start of data; return it and where it ended (BEP 9 pieces)."""
    decoder = _Decoder(bytes(data), max_depth, MAX_ITEMS)
    value = decoder.value(0)
    return value, decoder.pos


class _Decoder:
    __slots__ = ("buf", "items", "max_depth", "max_items", "pos")

    def __init__(self, buf: bytes, max_depth: int, max_items: int) -> None:
        self.buf = buf
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def value(self, depth: int) -> Any:
        if depth > self.max_depth:
            raise BencodeError("nesting too deep")
        self.items += 1
        if self.items > self.max_items:
            raise BencodeError("too many values")
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            raise BencodeError("unexpected end of data")
        c = buf[pos]
        if c == 0x69:  # i
            end = buf.find(b"e", pos + 1)
            if end < 0:
                raise BencodeError("unterminated integer")
            self.pos = end + 1
            return _parse_int(buf[pos + 1 : end])
        if c == 0x6C:  # l
            self.pos = pos + 1
            out: list[Any] = []
            while True:
                if self.pos >= len(buf):
                    raise BencodeError("unterminated list")
                if buf[self.pos] == 0x65:
                    self.pos += 1
                    return out
                out.append(self.value(depth + 1))
        if c == 0x64:  # d
            self.pos = pos + 1
            d: dict[bytes, Any] = {}
            while True:
                if self.pos >= len(buf):
                    raise BencodeError("unterminated dict")
                if buf[self.pos] == 0x65:
                    self.pos += 1
                    return d
                if not 0x30 <= buf[self.pos] <= 0x39:
                    raise BencodeError("dict key is not a string")
                key = self.string()
                d[key] = self.value(depth + 1)
        if 0x30 <= c <= 0x39:
            return self.string()
        raise BencodeError(f"unexpected byte 0x{c:02x} at offset {pos}")

    def string(self) -> bytes:
        buf, pos = self.buf, self.pos
        colon = buf.find(b":", pos, pos + 21)
        if colon < 0:
            raise BencodeError("bad string length")
        digits = buf[pos:colon]
        if not digits.isdigit() or (len(digits) > 1 and digits[0] == 0x30):
            raise BencodeError("bad string length")
        n = int(digits)
        end = colon + 1 + n
        if end > len(buf):
            raise BencodeError("string runs past end of data")
        self.pos = end
        return buf[colon + 1 : end]


def _parse_int(raw: bytes) -> int:
    if len(raw) > 32:
        raise BencodeError("integer too long")
    body = raw[1:] if raw[:1] == b"-" else raw
    if not body.isdigit() or (len(body) > 1 and body[0] == 0x30) or raw == b"-0":
        raise BencodeError("bad integer")
    return int(raw)


def encode(value: Any) -> bytes:
    """Bencode ints, bytes/str, lists and dicts (keys sorted as BEP 3 asks)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bool is not bencodable")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for v in value:
            _encode(v, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = [(k.encode() if isinstance(k, str) else bytes(k), v) for k, v in value.items()]
        for k, v in sorted(items):
            _encode(k, out)
            _encode(v, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


__all__ = ["MAX_DEPTH", "MAX_ITEMS", "BencodeError", "decode", "decode_prefix", "encode"]
