"""A strict DER subset, enough for PKCS#8: definite lengths in minimal form, one-byte tags.

Rules of this module:

- Parsing never copies: a ``Tlv``'s value is a view into the caller's buffer, which may be a
  ``SecretBuffer`` holding key bytes.
- Anything outside the subset (indefinite or non-minimal lengths, multi-byte tags, trailing
  bytes, non-minimal integers) is ``DerError``: one encoding per value, no malleability.
- Encoding (``tlv``, ``seq``, ``enc_int``, ``enc_oid``) is for what holds no secret: headers
  and parameters around a ciphertext.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "DerError",
    "Tlv",
    "enc_int",
    "enc_oid",
    "integer",
    "items",
    "oid",
    "parse",
    "seq",
    "tlv",
]


class DerError(ValueError):
    """Not DER of the strict subset we read."""


class Tlv(NamedTuple):
    tag: int
    value: memoryview


def parse(data: memoryview) -> list[Tlv]:
    """The TLVs that exactly fill ``data``; values are views into it (no copies)."""
    out: list[Tlv] = []
    i, end = 0, len(data)
    while i < end:
        if end - i < 2 or data[i] & 0x1F == 0x1F:
            raise DerError("malformed DER")
        tag, first = data[i], data[i + 1]
        i += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or end - i < count or data[i] == 0:
                raise DerError("malformed DER length")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
            if length < 0x80:
                raise DerError("malformed DER length")
        if end - i < length:
            raise DerError("truncated DER")
        out.append(Tlv(tag, data[i : i + length]))
        i += length
    return out


def items(t: Tlv, what: str, count: int | None = None) -> list[Tlv]:
    """The items of the SEQUENCE ``t``, ``count`` of them when given."""
    if t.tag != 0x30:
        raise DerError(f"malformed {what}")
    items = parse(t.value)
    if count is not None and len(items) != count:
        raise DerError(f"malformed {what}")
    return items


def integer(t: Tlv) -> int:
    v = t.value
    if t.tag != 0x02 or not v or v[0] & 0x80 or (len(v) > 1 and v[0] == 0 and v[1] < 0x80):
        raise DerError("malformed DER integer")
    return int.from_bytes(v, "big")


def oid(t: Tlv) -> str:
    v = bytes(t.value)
    if t.tag != 0x06 or not v or v[-1] & 0x80:
        raise DerError("malformed DER object identifier")
    arcs, acc = [], 0
    for byte in v:
        acc = acc << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(acc)
            acc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def enc_int(n: int) -> bytes:
    return tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def enc_oid(dotted: str) -> bytes:
    a, b, *rest = (int(x) for x in dotted.split("."))
    body = bytearray([40 * a + b])
    for arc in rest:
        chunk, left = [arc & 0x7F], arc >> 7
        while left:
            chunk.append(0x80 | left & 0x7F)
            left >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))
