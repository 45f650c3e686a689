"""Bencode (BEP 3) on hostile input: round trips, and BencodeError for everything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch import bencode
from swarmwatch.bencode import BencodeError, decode, encode

values: st.SearchStrategy[Any] = st.recursive(
    st.integers(-(2**63), 2**64) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.binary(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: Any) -> None:
    assert decode(encode(value)) == value


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_decode_or_raise_bencode_error(data: bytes) -> None:
    try:
        decode(data)
    except BencodeError:
        pass


@given(values, st.data())
def test_truncated_and_extended_input_is_refused(value: Any, data: st.DataObject) -> None:
    raw = encode(value)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(BencodeError):
        decode(raw[:cut])
    with pytest.raises(BencodeError):
        decode(raw + b"i1e")


@given(values, st.integers(0, 2000), st.integers(0, 255))
def test_single_byte_corruption_never_escapes(value: Any, pos: int, byte: int) -> None:
    raw = bytearray(encode(value))
    raw[pos % len(raw)] = byte
    try:
        decode(bytes(raw))
    except BencodeError:
        pass


def test_depth_and_size_bounds() -> None:
    with pytest.raises(BencodeError, match="deep"):
        decode(b"l" * 1000 + b"e" * 1000)
    assert decode(b"l" * 10 + b"e" * 10, max_depth=10) == [[[[[[[[[[]]]]]]]]]]
    with pytest.raises(BencodeError, match="too many"):
        decode(b"l" + b"i1e" * 100 + b"e", max_items=50)
    with pytest.raises(BencodeError, match="past end"):
        decode(b"99999999999:x")


@pytest.mark.parametrize(
    "raw",
    [
        b"i-0e",
        b"i01e",
        b"ie",
        b"i1",
        b"01:a",
        b"d1:ai1e",
        b"di1ei2ee",
        b"x",
        b"",
        b"i" + b"9" * 40 + b"e",
    ],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(raw)


def test_decode_prefix_returns_the_end() -> None:
    value, end = bencode.decode_prefix(b"d1:ai1ee" + b"PAYLOAD")
    assert value == {b"a": 1} and end == 8


def test_encode_sorts_keys_and_refuses_bool() -> None:
    assert encode({"b": 1, "a": [b"x", "y"]}) == b"d1:ali1ee1:bi1ee".replace(b"li1ee", b"l1:x1:ye")
    with pytest.raises(TypeError):
        encode(True)
