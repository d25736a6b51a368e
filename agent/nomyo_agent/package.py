"""The hybrid package of PROTOCOL.md as data: its constants, its JSON, its checks. No cryptography.

Rules of this module:

- It is the one home of the package format and of the security tiers: the agent (which seals
  and opens), the client (which names a router's defect) and the development router import it,
  so it imports the standard library, msgspec and ``_buffers`` only, never ``cryptography``.
- ``check`` parses strictly: unknown members of ``encrypted_payload``, duplicate keys, wrong JSON
  types, base64 that is not standard and padded, another version or algorithm (downgrades), a
  nonce that is not 12 bytes, a tag that is not 16, a ``processed_at`` that is not finite. It
  returns a ``Defect`` (what is wrong, and of which kind) rather than raising, so that callers
  decide what to reveal: the agent reveals nothing (one opaque error for every failure).
- A large package is parsed in slices. The ciphertext is nearly all of its bytes; held in one
  C call (msgspec's decode of the whole document, a search of it for duplicate keys) it would
  keep the GIL for tens of milliseconds and every other thread of the agent, its event loop
  first, would wait that long. So the ciphertext's string is cut out of the document (found by
  a search in slices), the small rest is decoded and checked as a whole, and the ciphertext is
  base64-decoded slice by slice (strictly, ``=`` only at the end): the
  interpreter may switch threads between slices. The verdict is the one-shot parse's; a
  document the cut cannot be sure about (a backslash escape before or in the ciphertext) is
  parsed in one shot, as any small one.
- ``build`` writes the JSON with a ciphertext handed in as base64 slices, in PROTOCOL.md's
  member order, without first joining the slices into one string, and joins the whole a slice
  at a time (one copy of megabytes in one call would hold the GIL as long).

Example::

    >>> raw = build(b"AAAA", nonce=bytes(12), tag=bytes(16), wrapped=b"k", processed_at=None)
    >>> parsed = check(raw)
    >>> (bytes(parsed.ciphertext), parsed.version)
    (b'\\x00\\x00\\x00', '1.0')
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from nomyo_agent import _buffers

__all__ = [
    "ALGORITHM",
    "KEY_ALGORITHM",
    "KEY_BYTES",
    "NONCE_BYTES",
    "PAYLOAD_ALGORITHM",
    "SLICE_BYTES",
    "TAG_BYTES",
    "TIERS",
    "VERSION",
    "Defect",
    "Parsed",
    "b64encode",
    "build",
    "check",
]

VERSION: Final = "1.0"
ALGORITHM: Final = "hybrid-aes256-rsa4096"
KEY_ALGORITHM: Final = "RSA-OAEP-SHA256"
PAYLOAD_ALGORITHM: Final = "AES-256-GCM"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
TIERS: Final = ("standard", "high", "maximum")  # X-Security-Tier, the client's security_tier
# 3 * 4 * 2**14 bytes: whole base64 quanta both ways, and about a quarter of a millisecond of
# base64 or AES-GCM work on this class of machine (measured in the agent under load: 768 KiB
# slices held the GIL about 1 ms each), so that no slice holds the GIL for long.
SLICE_BYTES: Final = 196_608


# Field order is the wire order of PROTOCOL.md. msgspec writes ``bytes`` (and memoryviews) as
# standard padded base64 and reads it back strictly (alphabet and padding checked).
class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    ciphertext: bytes
    nonce: bytes
    tag: bytes


# Unknown top-level members are ignored, as the public client ignores them: a router that adds a
# field (metadata of its own) must not break our client. The encrypted payload stays closed.
class _Package(msgspec.Struct, omit_defaults=True):
    version: str
    algorithm: str
    encrypted_payload: _Payload
    encrypted_aes_key: bytes
    key_algorithm: str | msgspec.UnsetType = msgspec.UNSET
    payload_algorithm: str | msgspec.UnsetType = msgspec.UNSET
    processed_at: float | msgspec.UnsetType | None = msgspec.UNSET


_decoder = msgspec.json.Decoder(_Package)
_encoder = msgspec.json.Encoder()
_b64_decoder = msgspec.json.Decoder(bytes)
_MEMBER_NAMES = tuple(
    f'"{name}"'.encode() for name in (*_Package.__struct_fields__, *_Payload.__struct_fields__)
)
_CIPHERTEXT_KEY = re.compile(rb'"ciphertext"[ \t\r\n]*:[ \t\r\n]*"')
_EMPTY_CIPHERTEXT = b'"ciphertext":""'


@dataclass(frozen=True, slots=True)
class Defect:
    """Why a package is not well-formed. ``kind``: ``shape`` (not a package at all: not JSON,
    a member missing or of the wrong type, bad base64), ``downgrade`` (another version or
    algorithm), ``defect`` (a package, but with a duplicate key or a wrong length)."""

    kind: Literal["shape", "downgrade", "defect"]
    reason: str


@dataclass(frozen=True, slots=True)
class Parsed:
    """A well-formed package; ``processed_at`` is None when absent."""

    version: str
    algorithm: str
    ciphertext: bytes | bytearray
    nonce: bytes
    tag: bytes
    wrapped: bytes
    processed_at: float | None


def check(
    raw: bytes | bytearray | memoryview, *, slice_bytes: int | None = None
) -> Parsed | Defect:
    """Parse and check everything that needs no key (``slice_bytes``: SLICE_BYTES by default)."""
    step = slice_bytes or SLICE_BYTES
    # A view (in the agent, into a request frame) is copied a slice at a time.
    data = raw if isinstance(raw, (bytes, bytearray)) else _buffers.join([raw])
    cut = _ciphertext_span(data, step) if len(data) > step else None
    skeleton = data if cut is None else data[: cut[0]] + data[cut[1] :]
    try:
        package = _decoder.decode(skeleton)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        return Defect("shape", f"not a package: {exc}")
    # Duplicate keys: msgspec keeps the last one silently, so a stale first "version" could hide.
    # A member name in quotes cannot occur in base64 or in our fixed values, so each known name
    # must appear at most once in the raw text (and the cut-out ciphertext holds no quote).
    if any(skeleton.count(name) > 1 for name in _MEMBER_NAMES):
        return Defect("defect", "not a package: a key appears twice")
    payload = package.encrypted_payload
    ciphertext: bytes | bytearray = payload.ciphertext
    if cut is not None:
        decoded = _b64decode(memoryview(data)[cut[0] : cut[1]], step)
        if decoded is None:
            return Defect("shape", "not a package: the ciphertext is not valid base64")
        ciphertext = decoded
    if package.version != VERSION:
        return Defect("downgrade", f"unsupported version {package.version!r}, expected {VERSION!r}")
    if package.algorithm != ALGORITHM:
        return Defect(
            "downgrade", f"unsupported algorithm {package.algorithm!r}, expected {ALGORITHM!r}"
        )
    if package.key_algorithm not in (msgspec.UNSET, KEY_ALGORITHM):
        return Defect("downgrade", f"unsupported key_algorithm {package.key_algorithm!r}")
    if package.payload_algorithm not in (msgspec.UNSET, PAYLOAD_ALGORITHM):
        return Defect("downgrade", f"unsupported payload_algorithm {package.payload_algorithm!r}")
    if len(payload.nonce) != NONCE_BYTES:
        return Defect("defect", f"the nonce has {len(payload.nonce)} bytes, expected {NONCE_BYTES}")
    if len(payload.tag) != TAG_BYTES:
        return Defect("defect", f"the tag has {len(payload.tag)} bytes, expected {TAG_BYTES}")
    stamp = package.processed_at
    if isinstance(stamp, float) and not math.isfinite(stamp):
        return Defect("defect", "processed_at is not a finite number")
    return Parsed(
        package.version,
        package.algorithm,
        ciphertext,
        payload.nonce,
        payload.tag,
        package.encrypted_aes_key,
        None if stamp is msgspec.UNSET else stamp,
    )


def _find(data: bytes | bytearray, needle: bytes, start: int, end: int, step: int) -> int:
    """``data.find(needle, start, end)``, one slice at a time."""
    while start < end:
        stop = min(end, start + step + len(needle) - 1)
        found = data.find(needle, start, stop)
        if found >= 0:
            return found
        start += step
    return -1


def _ciphertext_span(data: bytes | bytearray, step: int) -> tuple[int, int] | None:
    """Where the ciphertext's base64 text starts and ends, if that is certain without a full
    JSON parse: the first ``"ciphertext"`` stands outside any string (no escape before it and
    an even number of quotes) and its string holds no escape, so its end is the next quote."""
    key = _find(data, b'"ciphertext"', 0, len(data), step)
    if key < 0:
        return None
    head = data[:key]
    if b"\\" in head or head.count(b'"') % 2:
        return None
    opened = _CIPHERTEXT_KEY.match(data, key, key + 64)
    if opened is None:
        return None
    start = opened.end()
    end = _find(data, b'"', start, len(data), step)
    if end < 0 or _find(data, b"\\", start, end, step) >= 0:
        return None
    return start, end


def _b64decode(text: memoryview, step: int) -> bytearray | None:
    """Strict standard base64 of ``text`` decoded slice by slice; None if it is not that."""
    step -= step % 4
    out = bytearray()
    for offset in range(0, len(text), step):
        piece = text[offset : offset + step]
        # Each slice is whole quanta, so msgspec checks the alphabet and the padding (as it does
        # for the whole); padding that ends a slice before the last one ends the text too early.
        # (msgspec, not binascii: CPython 3.11's binascii is several times slower.)
        if offset + step < len(text) and piece[-1] == ord("="):
            return None
        quoted = bytearray(b'"')
        quoted += piece
        quoted += b'"'
        try:
            out += _b64_decoder.decode(quoted)
        except msgspec.DecodeError:
            return None
    return out


def b64encode(data: bytes | bytearray | memoryview) -> memoryview:
    """Standard padded base64 of ``data`` (msgspec's, several times faster than binascii's)."""
    return memoryview(_encoder.encode(data))[1:-1]


def build(
    ciphertext_b64: bytes | Iterable[bytes | memoryview],
    *,
    nonce: bytes,
    tag: bytes,
    wrapped: bytes,
    processed_at: float | None,
) -> bytes | bytearray:
    """The package JSON around a ciphertext given as base64 (one piece or slices); a large one
    is joined a slice at a time into a ``bytearray`` (``_buffers.join``)."""
    skeleton = _encoder.encode(
        _Package(
            version=VERSION,
            algorithm=ALGORITHM,
            encrypted_payload=_Payload(ciphertext=b"", nonce=nonce, tag=tag),
            encrypted_aes_key=wrapped,
            key_algorithm=KEY_ALGORITHM,
            payload_algorithm=PAYLOAD_ALGORITHM,
            processed_at=msgspec.UNSET if processed_at is None else float(processed_at),
        )
    )
    at = skeleton.index(_EMPTY_CIPHERTEXT) + len(_EMPTY_CIPHERTEXT) - 1
    pieces = [ciphertext_b64] if isinstance(ciphertext_b64, bytes) else list(ciphertext_b64)
    return _buffers.join((skeleton[:at], *pieces, skeleton[at:]))
