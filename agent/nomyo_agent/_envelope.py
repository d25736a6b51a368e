"""The hybrid package of PROTOCOL.md sealed and opened: AES-256-GCM for the message, RSA-OAEP for
its key. (The package's JSON and its checks are ``package.py``'s, which needs no cryptography.)

Rules of this module:

- It is pure: bytes in, bytes out, no I/O, no clock (``processed_at`` is the caller's value).
  The agent and the development router both use it, so both speak the same bytes.
- The wire form is exactly PROTOCOL.md's: standard padded base64, the 16-byte GCM tag carried
  apart from the ciphertext, no associated data, RSA-OAEP with MGF1-SHA256, SHA-256 and no
  label. Every ``seal`` draws a fresh 32-byte key and a fresh 12-byte nonce from the OS; nothing
  is ever reused.
- ``open_package`` refuses everything ``package.check`` refuses, and a wrapped key that is not
  exactly the modulus size, *before* any private-key operation. Every failure, whatever the
  step, raises the same ``DecryptFailedError`` with the same message and no chained cause, so
  callers cannot become an oracle for which step failed.
- AES-GCM runs in slices of ``package.SLICE_BYTES`` (as a seal's base64 does): between slices the
  interpreter may switch threads, so a large payload on a worker never holds the GIL for long.
  Slices are decrypted into one buffer (``_buffers.fresh``, no join at the end) that stays here
  until ``finalize`` has checked the tag: unauthenticated plaintext is never handed out, and on
  a failure it is wiped.
- The AES key and the unwrapped key bytes are wiped with ``_secret.wipe`` as soon as the cipher
  no longer needs them.

Example::

    >>> key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    >>> package = seal(key.public_key(), b'{"model": "m"}', processed_at=1.5)
    >>> open_package(key, package)
    Opened(plaintext=b'{"model": "m"}', processed_at=1.5)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext, Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import GCM

from nomyo_agent import _buffers
from nomyo_agent import package as pk
from nomyo_agent._secret import wipe
from nomyo_agent.errors import DecryptFailedError

__all__ = ["Opened", "diagnose", "open_package", "seal"]

_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_BLOCK = 16  # AES's block, in bytes
_FAILED = "the encrypted package could not be opened"
_FAILED_HINT = (
    "it was altered, truncated, not a package, or sealed to another key; "
    "if the router key changed, fetch it again"
)


@dataclass(frozen=True, slots=True)
class Opened:
    """An opened package: the plaintext and the sender's ``processed_at`` (None if absent)."""

    plaintext: bytes | bytearray  # a bytearray when large (decrypted into place)
    processed_at: float | None


class _Malformed(Exception):
    """Internal: why a package cannot be opened (never shown by ``open_package``)."""


def seal(
    recipient: rsa.RSAPublicKey,
    plaintext: bytes | bytearray | memoryview,
    *,
    processed_at: float | None = None,
) -> bytes | bytearray:
    """Encrypt ``plaintext`` to ``recipient``; returns the package JSON as UTF-8 bytes (in a
    ``bytearray`` when large, joined a slice at a time).

    ``processed_at`` (Unix seconds) is added when given, as routers do on their answers.
    """
    key = os.urandom(pk.KEY_BYTES)  # bytes we own, so that wipe may zero them in place
    nonce = os.urandom(pk.NONCE_BYTES)
    view, step = memoryview(plaintext).cast("B"), pk.SLICE_BYTES
    try:
        if len(view) <= step:  # one slice: the one-shot AEAD is the cheaper call
            sealed = memoryview(AESGCM(key).encrypt(nonce, view, None))
            text, tag = [pk.b64encode(sealed[: -pk.TAG_BYTES])], bytes(sealed[-pk.TAG_BYTES :])
        else:
            encryptor = Cipher(AES(key), GCM(nonce)).encryptor()
            # GCM is a stream: each slice's ciphertext is as long as the slice, and every slice
            # but the last is whole base64 quanta (SLICE_BYTES is a multiple of 3), so the
            # slices' base64 joins into the whole's.
            text = [
                pk.b64encode(encryptor.update(view[i : i + step]))
                for i in range(0, len(view), step)
            ]
            encryptor.finalize()
            tag = encryptor.tag
        wrapped = recipient.encrypt(key, _OAEP)
    finally:
        wipe(key)
    return pk.build(text, nonce=nonce, tag=tag, wrapped=wrapped, processed_at=processed_at)


def diagnose(package: bytes | bytearray | memoryview) -> str | None:
    """Why ``package`` is not well-formed, or None when it is (it may still fail to open).

    For a development router's error details only: the structure of a package is public, so
    naming its defect reveals nothing; whether the key unwrapped or the tag matched is never
    told here or anywhere.
    """
    checked = pk.check(package)
    return checked.reason if isinstance(checked, pk.Defect) else None


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
    parsed = pk.check(package)
    if isinstance(parsed, pk.Defect):
        raise _Malformed(parsed.reason)
    if len(parsed.wrapped) != (private_key.key_size + 7) // 8:
        raise _Malformed("the wrapped key does not match the key size")
    key = private_key.decrypt(parsed.wrapped, _OAEP)
    plaintext: bytearray | None = None
    try:
        if len(key) != pk.KEY_BYTES:
            raise _Malformed("the unwrapped key is not 32 bytes")
        view, step = memoryview(parsed.ciphertext), pk.SLICE_BYTES
        if len(view) <= step:  # one slice: the one-shot AEAD authenticates before it returns
            sealed = parsed.ciphertext + parsed.tag
            return Opened(AESGCM(key).decrypt(parsed.nonce, sealed, None), parsed.processed_at)
        decryptor = Cipher(AES(key), GCM(parsed.nonce, parsed.tag)).decryptor()
        # Each slice is decrypted straight into its place (no join of megabytes at the end).
        plaintext = _buffers.fresh(len(view))
        _decrypt_into(decryptor, view, plaintext, step)
        decryptor.finalize()  # raises InvalidTag: nothing was handed out yet
    except BaseException:
        if plaintext is not None:  # unauthenticated plaintext does not linger
            wipe(plaintext)
        raise
    finally:
        wipe(key)
    return Opened(plaintext, parsed.processed_at)


def _decrypt_into(
    decryptor: AEADDecryptionContext, view: memoryview, out: bytearray, step: int
) -> None:
    """Decrypt ``view`` into ``out`` (as long as it) a slice at a time."""
    room = memoryview(out)
    try:
        for offset in range(0, len(view), step):
            piece = view[offset : offset + step]
            # update_into wants room for a block more than the slice; the last slice gets it
            # via update and a copy.
            if offset + len(piece) + _BLOCK - 1 <= len(out):
                written = decryptor.update_into(piece, room[offset:])
            else:
                chunk = decryptor.update(piece)
                room[offset : offset + len(chunk)] = chunk
                written = len(chunk)
                wipe(chunk)
            if written != len(piece):  # GCM is a stream cipher: never happens
                raise _Malformed("the cipher returned a slice of another length")
    finally:
        room.release()
