"""The hybrid package of PROTOCOL.md: AES-256-GCM for the message, RSA-OAEP for its key.

Rules of this module:

- It is pure: bytes in, bytes out, no I/O, no clock (``processed_at`` is the caller's value).
  The agent and the development router both use it, so both speak the same bytes.
- The wire form is exactly PROTOCOL.md's: the JSON keys and values it names, in its order,
  standard padded base64, the 16-byte GCM tag carried apart from the ciphertext, no associated
  data, RSA-OAEP with MGF1-SHA256, SHA-256 and no label. Every ``seal`` draws a fresh 32-byte
  key and a fresh 12-byte nonce from the OS; nothing is ever reused.
- ``open_package`` parses strictly: unknown keys, duplicate keys, wrong JSON types, another
  version or algorithm (downgrades), a nonce that is not 12 bytes, a tag that is not 16, or a
  wrapped key that is not exactly the modulus size are all refused *before* any private-key
  operation. Every failure, whatever the step, raises the same ``DecryptFailedError`` with the
  same message and no chained cause, so callers cannot become an oracle for which step failed.
- The AES key and the unwrapped key bytes are wiped with ``_secret.wipe`` as soon as the cipher
  no longer needs them.

Example::

    >>> key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    >>> package = seal(key.public_key(), b'{"model": "m"}', processed_at=1.5)
    >>> open_package(key, package)
    Opened(plaintext=b'{"model": "m"}', processed_at=1.5)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nomyo_agent._secret import wipe
from nomyo_agent.errors import DecryptFailedError

__all__ = [
    "ALGORITHM",
    "KEY_ALGORITHM",
    "PAYLOAD_ALGORITHM",
    "VERSION",
    "Opened",
    "diagnose",
    "open_package",
    "seal",
]

VERSION = "1.0"
ALGORITHM = "hybrid-aes256-rsa4096"
KEY_ALGORITHM = "RSA-OAEP-SHA256"
PAYLOAD_ALGORITHM = "AES-256-GCM"

_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_FAILED = "the encrypted package could not be opened"
_FAILED_HINT = (
    "it was altered, truncated, not a package, or sealed to another key; "
    "if the router key changed, fetch it again"
)


@dataclass(frozen=True, slots=True)
class Opened:
    """An opened package: the plaintext and the sender's ``processed_at`` (None if absent)."""

    plaintext: bytes
    processed_at: float | None


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
_MEMBER_NAMES = tuple(
    f'"{name}"'.encode() for name in (*_Package.__struct_fields__, *_Payload.__struct_fields__)
)
_encoder = msgspec.json.Encoder()


class _Malformed(Exception):
    """Internal: why a package is not well-formed (never shown by ``open_package``)."""


def seal(
    recipient: rsa.RSAPublicKey,
    plaintext: bytes | bytearray | memoryview,
    *,
    processed_at: float | None = None,
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient``; returns the package JSON as UTF-8 bytes.

    ``processed_at`` (Unix seconds) is added when given, as routers do on their answers.
    """
    key = os.urandom(_KEY_BYTES)  # bytes we own, so that wipe may zero them in place
    nonce = os.urandom(_NONCE_BYTES)
    try:
        sealed = memoryview(AESGCM(key).encrypt(nonce, plaintext, None))
        wrapped = recipient.encrypt(key, _OAEP)
    finally:
        wipe(key)
    package = _Package(
        version=VERSION,
        algorithm=ALGORITHM,
        encrypted_payload=_Payload(
            ciphertext=sealed[:-_TAG_BYTES],  # type: ignore[arg-type]  # msgspec encodes views
            nonce=nonce,
            tag=sealed[-_TAG_BYTES:],  # type: ignore[arg-type]
        ),
        encrypted_aes_key=wrapped,
        key_algorithm=KEY_ALGORITHM,
        payload_algorithm=PAYLOAD_ALGORITHM,
        processed_at=msgspec.UNSET if processed_at is None else float(processed_at),
    )
    return _encoder.encode(package)


def _parse(package: bytes | bytearray | memoryview) -> _Package:
    """Decode and check everything that needs no key; raises ``_Malformed`` with a reason."""
    try:
        parsed = _decoder.decode(package)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise _Malformed(f"not a package: {exc}") from None
    # Duplicate keys: msgspec keeps the last one silently, so a stale first "version" could hide.
    # A member name in quotes cannot occur in base64 or in our fixed values, so each known name
    # must appear at most once in the raw text.
    raw = package if isinstance(package, (bytes, bytearray)) else bytes(package)
    if any(raw.count(name) > 1 for name in _MEMBER_NAMES):
        raise _Malformed("not a package: a key appears twice")
    if parsed.version != VERSION:
        raise _Malformed(f"unsupported version {parsed.version!r}, expected {VERSION!r}")
    if parsed.algorithm != ALGORITHM:
        raise _Malformed(f"unsupported algorithm {parsed.algorithm!r}, expected {ALGORITHM!r}")
    if parsed.key_algorithm not in (msgspec.UNSET, KEY_ALGORITHM):
        raise _Malformed(f"unsupported key_algorithm {parsed.key_algorithm!r}")
    if parsed.payload_algorithm not in (msgspec.UNSET, PAYLOAD_ALGORITHM):
        raise _Malformed(f"unsupported payload_algorithm {parsed.payload_algorithm!r}")
    payload = parsed.encrypted_payload
    if len(payload.nonce) != _NONCE_BYTES:
        raise _Malformed(f"the nonce has {len(payload.nonce)} bytes, expected {_NONCE_BYTES}")
    if len(payload.tag) != _TAG_BYTES:
        raise _Malformed(f"the tag has {len(payload.tag)} bytes, expected {_TAG_BYTES}")
    stamp = parsed.processed_at
    if isinstance(stamp, float) and not math.isfinite(stamp):
        raise _Malformed("processed_at is not a finite number")
    return parsed


def diagnose(package: bytes | bytearray | memoryview) -> str | None:
    """Why ``package`` is not well-formed, or None when it is (it may still fail to open).

    For a development router's error details only: the structure of a package is public, so
    naming its defect reveals nothing; whether the key unwrapped or the tag matched is never
    told here or anywhere.
    """
    try:
        _parse(package)
    except _Malformed as exc:
        return str(exc)
    return None


def open_package(private_key: rsa.RSAPrivateKey, package: bytes | bytearray | memoryview) -> Opened:
    """Decrypt a package sealed to ``private_key``'s public key.

    Raises ``DecryptFailedError`` (always the same message) when anything is wrong with it.
    """
    try:
        return _open(private_key, package)
    except Exception:
        # One message for every step (parse, unwrap, tag) and no cause attached: no oracle.
        raise DecryptFailedError(_FAILED, _FAILED_HINT) from None


def _open(private_key: rsa.RSAPrivateKey, package: bytes | bytearray | memoryview) -> Opened:
    parsed = _parse(package)
    wrapped = parsed.encrypted_aes_key
    if len(wrapped) != (private_key.key_size + 7) // 8:
        raise _Malformed("the wrapped key does not match the key size")
    key = private_key.decrypt(wrapped, _OAEP)
    try:
        if len(key) != _KEY_BYTES:
            raise _Malformed("the unwrapped key is not 32 bytes")
        payload = parsed.encrypted_payload
        # AESGCM may read the key lazily on first use: wipe only after decrypting.
        plaintext = AESGCM(key).decrypt(payload.nonce, payload.ciphertext + payload.tag, None)
    finally:
        wipe(key)
    stamp = parsed.processed_at
    return Opened(plaintext, None if stamp is msgspec.UNSET else stamp)
