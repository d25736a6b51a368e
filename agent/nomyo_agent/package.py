"""The hybrid package of PROTOCOL.md as data: its constants, its JSON, its checks. No cryptography.

Rules of this module:

- It is the one home of the package format and of the security tiers: the agent (which seals
  and opens), the client (which names a router's defect) and the development router import it,
  so it imports the standard library, msgspec and ``_buffers`` only (and pybase64 where only the
  agent and the router come), never ``cryptography``.
- ``check`` parses strictly: unknown members of ``encrypted_payload``, duplicate keys, wrong JSON
  types, base64 that is not standard and padded, another version or algorithm (downgrades), a
  nonce that is not 12 bytes, a tag that is not 16, a ``processed_at`` that is not finite. It
  returns a ``Defect`` (what is wrong, and of which kind) rather than raising, so that callers
  decide what to reveal: the agent reveals nothing (one opaque error for every failure).
- A large package is parsed without one long hold of the GIL. The ciphertext is nearly all of
  its bytes; held in one C call (msgspec's decode of the whole document, a search of it for
  duplicate keys) it would keep the GIL for tens of milliseconds and every other thread of the
  agent, its event loop first, would wait that long. So the ciphertext's string is cut out of
  the document (found by a search a slice at a time, through a small buffer: the document may
  be a view into a request frame, read where it is), the small rest is decoded and checked as a
  whole, and the ciphertext is base64-decoded in one call of pybase64, which lets go of the GIL
  (strictly: standard alphabet, ``=`` only at the end). The verdict is the one-shot parse's; a
  document the cut cannot be sure about (a backslash escape before or in the ciphertext) is
  parsed in one shot, as any small one. pybase64 is imported only there and in ``b64encode``,
  which only the agent and the router call: a client never loads it.
- ``build`` writes the JSON with a ciphertext handed in as base64 slices, in PROTOCOL.md's
  member order, without first joining the slices into one string, and joins the whole with
  ``_buffers.join``, which copies megabytes without the GIL.

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
# 3 * 4 * 2**14 bytes: whole base64 quanta both ways. A seal encrypts and encodes a slice at a
# time, and the searches of ``check`` copy a slice at a time, so that no step holds the GIL for
# long (measured in the agent under load: 768 KiB slices held it about 1 ms each).
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
    # A view (in the agent, into a request frame) is read where it is: the ciphertext is
    # searched a slice at a time and decoded from the view, and only the small rest is copied.
    data = memoryview(raw).cast("B")
    cut = _ciphertext_span(data, step) if len(data) > step else None
    if cut is None:
        skeleton = raw if isinstance(raw, (bytes, bytearray)) else bytes(data)
    else:
        skeleton = bytes(data[: cut[0]]) + bytes(data[cut[1] :])
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
        decoded = _b64decode(data[cut[0] : cut[1]])
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


def _find(data: memoryview, needle: bytes, start: int, end: int, step: int) -> int:
    """``data.find(needle, start, end)`` for a view, which has no ``find``: a slice at a time,
    each copied into one small buffer (a copy of the whole would be megabytes of new memory)."""
    window = bytearray(max(0, min(step + len(needle) - 1, end - start)))
    room = memoryview(window)
    while start < end:
        stop = min(end, start + step + len(needle) - 1)
        room[: stop - start] = data[start:stop]
        found = window.find(needle, 0, stop - start)
        if found >= 0:
            return start + found
        start += step
    return -1


def _ciphertext_span(data: memoryview, step: int) -> tuple[int, int] | None:
    """Where the ciphertext's base64 text starts and ends, if that is certain without a full
    JSON parse: the first ``"ciphertext"`` stands outside any string (no escape before it and
    an even number of quotes) and its string holds no escape, so its end is the next quote."""
    key = _find(data, b'"ciphertext"', 0, len(data), step)
    if key < 0:
        return None
    head = bytes(data[:key])
    if b"\\" in head or head.count(b'"') % 2:
        return None
    opened = _CIPHERTEXT_KEY.match(data, key, key + 64)
    if opened is None:
        return None
    start = opened.end()
    end = _string_end(data, start, step)
    return None if end is None else (start, end)


def _string_end(data: memoryview, start: int, step: int) -> int | None:
    """Where the JSON string whose text starts at ``start`` ends (its closing quote), if no
    backslash comes before that; None otherwise, or if it never ends. One pass over the text,
    a slice at a time copied once into a small buffer, for the quote and the backslash both."""
    window = bytearray(max(0, min(step, len(data) - start)))
    room = memoryview(window)
    for at in range(start, len(data), step):
        n = min(step, len(data) - at)
        room[:n] = data[at : at + n]
        quote = window.find(b'"', 0, n)
        if window.find(b"\\", 0, n if quote < 0 else quote) >= 0:
            return None
        if quote >= 0:
            return at + quote
    return None


def _b64decode(text: memoryview) -> bytes | None:
    """Strict standard base64 of ``text`` (alphabet and padding checked, as msgspec checks the
    members of a small package), or None if it is not that. One call of pybase64, which lets
    go of the GIL while it decodes and while the kernel maps in the pages it writes."""
    import pybase64  # noqa: PLC0415 - the agent's and the router's only (module rules)

    try:
        return pybase64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error
        return None


def b64encode(data: bytes | bytearray | memoryview) -> bytes:
    """Standard padded base64 of ``data`` (pybase64's SIMD code: about twenty times faster than
    msgspec's or binascii's, and it lets go of the GIL while it encodes)."""
    import pybase64  # noqa: PLC0415 - the agent's and the router's only (module rules)

    return pybase64.b64encode(data)


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
