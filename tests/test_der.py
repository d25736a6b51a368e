"""The strict DER subset under PKCS#8, with bytes only (test_pkcs8.py fuzzes it inside keys)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomyo_agent import _der


@given(st.integers(0, 2**4096))
def test_integers_round_trip(n: int) -> None:
    (t,) = _der.parse(memoryview(_der.enc_int(n)))
    assert _der.integer(t) == n


@given(st.integers(0, 2), st.integers(0, 39), st.lists(st.integers(0, 2**64), max_size=10))
def test_object_identifiers_round_trip(a: int, b: int, rest: list[int]) -> None:
    dotted = ".".join(map(str, [a, b, *rest]))
    (t,) = _der.parse(memoryview(_der.enc_oid(dotted)))
    assert _der.oid(t) == dotted


def test_values_are_views_into_the_callers_buffer() -> None:
    data = bytearray(_der.seq(_der.tlv(4, b"x" * 200), _der.enc_int(5)))
    (top,) = _der.parse(memoryview(data))
    octets, five = _der.items(top, "test", 2)
    assert _der.integer(five) == 5
    data[-1] = 6  # the parse holds views, not copies
    assert _der.integer(five) == 6
    assert octets.value.obj is data


@pytest.mark.parametrize(
    "der",
    [
        b"\x04\x81\x05abcde",  # long form for a short length
        b"\x04\x82\x00\x80" + b"x" * 128,  # a leading zero length byte
        b"\x04\x80",  # indefinite length
        b"\x1f\x01\x00",  # multi-byte tag
        b"\x04\x05abc",  # truncated
        b"\x04",  # no length
        b"\x04\x85\x01\x00\x00\x00\x00",  # length of five bytes
    ],
)
def test_anything_outside_the_subset_is_refused(der: bytes) -> None:
    with pytest.raises(_der.DerError):
        _der.parse(memoryview(der))


@pytest.mark.parametrize("value", [b"\x00\x05", b"\xff", b""])
def test_non_minimal_or_negative_integers_are_refused(value: bytes) -> None:
    (t,) = _der.parse(memoryview(_der.tlv(2, value)))
    with pytest.raises(_der.DerError, match="integer"):
        _der.integer(t)


def test_a_sequence_of_the_wrong_size_names_what_was_expected() -> None:
    (t,) = _der.parse(memoryview(_der.seq(_der.enc_int(1))))
    with pytest.raises(_der.DerError, match="malformed PBES2-params"):
        _der.items(t, "PBES2-params", 2)
