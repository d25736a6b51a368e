"""PKCS#8 private-key PEM, encrypted (PBES2) or not, decoded straight into a ``SecretBuffer``.

Why this exists: ``cryptography``'s ``load_pem_private_key(pem, password)`` decrypts into memory
of OpenSSL's that is freed without being cleared, so the private key's primes stay readable in the
agent after the key object is gone (TESTING.md, "Key residue"). Here the decrypted DER goes into
a buffer we own and zero; the caller loads the key from its ``view`` and closes it.

Rules of this module:

- What we write: PBES2 with PBKDF2-HMAC-SHA256 (``PBKDF2_ITERATIONS``, a fresh 16-byte salt)
  and AES-256-CBC (a fresh IV), the form ``cryptography`` and OpenSSL read.
- What we read: PBES2 with PBKDF2 under HMAC-SHA1/224/256/384/512 and any iteration count, and
  AES-128/192/256-CBC; that covers what ``cryptography``'s ``BestAvailableEncryption`` and
  OpenSSL 1.1/3 write. Anything else is ``Pkcs8Error``.
- Every intermediate that holds key bytes (derived key, decoded DER, padded plaintext) is a
  ``SecretBuffer`` or is wiped before we return or raise.
- The container is read by ``_der``'s strict subset; its errors become ``Pkcs8Error`` here.
- Failing to decrypt (bad padding, plaintext that is not one DER SEQUENCE) is
  ``WrongPassphrase``; a malformed container is ``Pkcs8Error``.
"""

from __future__ import annotations

import binascii
import os
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from nomyo_agent import _der
from nomyo_agent._secret import SecretBuffer, wipe

__all__ = [
    "PBKDF2_ITERATIONS",
    "Pkcs8Error",
    "WrongPassphrase",
    "decode_pem",
    "encrypt_der",
    "is_encrypted",
    "pem_label",
]

PBKDF2_ITERATIONS = 600_000  # OWASP 2023 advice for PBKDF2-HMAC-SHA256

_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_HMAC_SHA1 = "1.2.840.113549.2.7"
_PRFS: dict[str, type[hashes.HashAlgorithm]] = {
    _HMAC_SHA1: hashes.SHA1,  # the PBKDF2 default when the prf field is absent
    "1.2.840.113549.2.8": hashes.SHA224,
    "1.2.840.113549.2.9": hashes.SHA256,
    "1.2.840.113549.2.10": hashes.SHA384,
    "1.2.840.113549.2.11": hashes.SHA512,
}
_HMAC_SHA256 = "1.2.840.113549.2.9"
_AES_CBC = {
    "2.16.840.1.101.3.4.1.2": 16,
    "2.16.840.1.101.3.4.1.22": 24,
    "2.16.840.1.101.3.4.1.42": 32,
}
_AES256_CBC = "2.16.840.1.101.3.4.1.42"

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/=\s]*")


class Pkcs8Error(ValueError):
    """Not a PKCS#8 PEM we can read (wrong label, bad base64 or DER, unknown algorithm)."""


class WrongPassphrase(Pkcs8Error):
    """The passphrase does not decrypt this key."""


def _find(pem: bytes | bytearray | memoryview) -> re.Match[bytes]:
    # ``re`` searches any buffer in place, so a PEM held in a SecretBuffer is never copied whole;
    # only the label group is materialised.
    m = _PEM.search(pem)
    if m is None:
        raise Pkcs8Error("no PEM block found")
    return m


def pem_label(pem: bytes | bytearray | memoryview) -> str:
    """The PEM label, e.g. ``"ENCRYPTED PRIVATE KEY"`` or ``"RSA PRIVATE KEY"``."""
    return _find(pem).group(1).decode("ascii")


def is_encrypted(pem: bytes | bytearray | memoryview) -> bool:
    return pem_label(pem) == "ENCRYPTED PRIVATE KEY"


def _body(pem: bytes | bytearray | memoryview, m: re.Match[bytes]) -> SecretBuffer:
    """Base64-decode the block's body into a SecretBuffer, wiping the one bytes copy."""
    body = memoryview(pem)[m.start(2) : m.end(2)]
    if _BASE64_BODY.fullmatch(body) is None:
        raise Pkcs8Error("the PEM body is not base64 (headers such as Proc-Type are not PKCS#8)")
    try:
        raw = binascii.a2b_base64(body)
    except binascii.Error as exc:
        raise Pkcs8Error("the PEM body is not valid base64") from exc
    try:
        return SecretBuffer.from_bytes(raw)
    finally:
        wipe(raw)


def _decrypt(der: memoryview, passphrase: bytes | bytearray | memoryview) -> SecretBuffer:
    top = _der.parse(der)
    if len(top) != 1:
        raise Pkcs8Error("malformed EncryptedPrivateKeyInfo")
    algo_tlv, data = _der.items(top[0], "EncryptedPrivateKeyInfo", 2)
    algo = _der.items(algo_tlv, "AlgorithmIdentifier", 2)
    if _der.oid(algo[0]) != _PBES2:
        raise Pkcs8Error("the key is not encrypted with PBES2")
    kdf, enc = _der.items(algo[1], "PBES2-params", 2)
    kdf_oid, kdf_params = _der.items(kdf, "keyDerivationFunc", 2)
    if _der.oid(kdf_oid) != _PBKDF2:
        raise Pkcs8Error("the key's PBES2 uses a key derivation other than PBKDF2")
    enc_oid, iv = _der.items(enc, "encryptionScheme", 2)
    key_len = _AES_CBC.get(_der.oid(enc_oid))
    if key_len is None or iv.tag != 0x04 or len(iv.value) != 16:
        raise Pkcs8Error("the key is encrypted with a cipher other than AES-CBC")
    params = _der.items(kdf_params, "PBKDF2-params")
    if len(params) < 2 or params[0].tag != 0x04:
        raise Pkcs8Error("malformed PBKDF2-params")
    iterations = _der.integer(params[1])
    prf = _HMAC_SHA1
    for extra in params[2:]:
        if extra.tag == 0x02 and _der.integer(extra) != key_len:  # the optional keyLength
            raise Pkcs8Error("the PBKDF2 key length does not match the cipher")
        if extra.tag == 0x30:
            prf = _der.oid(_der.items(extra, "prf")[0])
    if prf not in _PRFS or not 1 <= iterations <= 100_000_000:
        raise Pkcs8Error("unsupported PBKDF2 parameters")
    ciphertext = data.value
    if data.tag != 0x04 or not ciphertext or len(ciphertext) % 16:
        raise Pkcs8Error("the encrypted key is not a whole number of AES blocks")

    with SecretBuffer(key_len) as key:
        kdf_ = PBKDF2HMAC(_PRFS[prf](), key_len, bytes(params[0].value), iterations)
        kdf_.derive_into(passphrase, key.view)
        decryptor = Cipher(algorithms.AES(key.view), modes.CBC(bytes(iv.value))).decryptor()
        padded = SecretBuffer(len(ciphertext) + 15)  # update_into wants a block of slack
        try:
            n = decryptor.update_into(ciphertext, padded.view)
            decryptor.finalize()  # CBC without padding: nothing buffered after whole blocks
            del decryptor  # releases its hold on ``key.view`` before ``key`` closes
            return _unpad(padded.view[:n])
        finally:
            padded.close()


def _unpad(plain: memoryview) -> SecretBuffer:
    pad = plain[-1] if len(plain) else 0
    if not 1 <= pad <= 16 or pad > len(plain) or any(b != pad for b in plain[-pad:]):
        raise WrongPassphrase("wrong passphrase")
    body = plain[: len(plain) - pad]
    try:
        (only,) = _der.parse(body)  # one DER SEQUENCE filling the plaintext, else not our key
    except ValueError as exc:
        raise WrongPassphrase("wrong passphrase") from exc
    if only.tag != 0x30:
        raise WrongPassphrase("wrong passphrase")
    return SecretBuffer.from_bytes(body)


def decode_pem(
    pem: bytes | bytearray | memoryview, passphrase: bytes | bytearray | memoryview | None
) -> SecretBuffer:
    """The PKCS#8 PrivateKeyInfo DER of a ``PRIVATE KEY`` or ``ENCRYPTED PRIVATE KEY`` PEM.

    The result is the caller's to close. An encrypted PEM with ``passphrase`` None raises
    ``WrongPassphrase`` too; callers that care ask ``is_encrypted`` first. Usage::

        with decode_pem(stored.view, b"passphrase") as der:
            key = load_der_private_key(der.view, None)
    """
    m = _find(pem)
    label = m.group(1)
    if label not in (b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"):
        raise Pkcs8Error(f"a {label.decode()} PEM is not PKCS#8")
    der = _body(pem, m)
    if label == b"PRIVATE KEY":
        return der
    try:
        if passphrase is None:
            raise WrongPassphrase("the key is encrypted and no passphrase was given")
        return _decrypt(der.view, passphrase)
    except _der.DerError as exc:
        raise Pkcs8Error(str(exc)) from exc
    finally:
        der.close()


def encrypt_der(
    der: bytes | bytearray | memoryview,
    passphrase: bytes | bytearray | memoryview,
    *,
    iterations: int = PBKDF2_ITERATIONS,
) -> bytes:
    """An ``ENCRYPTED PRIVATE KEY`` PEM of a PrivateKeyInfo DER (PBES2, PBKDF2-SHA256, AES-256).

    The result holds no plaintext, so it is plain ``bytes``. ``cryptography``'s
    ``load_pem_private_key(pem, passphrase)`` and ``openssl pkcs8`` read it.
    """
    salt, iv = os.urandom(16), os.urandom(16)
    src = memoryview(der).cast("B")
    pad = 16 - len(src) % 16
    with SecretBuffer(32) as key, SecretBuffer(len(src) + pad) as padded:
        PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive_into(passphrase, key.view)
        padded.view[: len(src)] = src
        padded.view[len(src) :] = bytes([pad]) * pad
        encryptor = Cipher(algorithms.AES(key.view), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded.view) + encryptor.finalize()
        del encryptor
    prf = _der.seq(_der.enc_oid(_HMAC_SHA256), b"\x05\x00")
    kdf = _der.seq(
        _der.enc_oid(_PBKDF2), _der.seq(_der.tlv(4, salt), _der.enc_int(iterations), prf)
    )
    enc = _der.seq(_der.enc_oid(_AES256_CBC), _der.tlv(4, iv))
    info = _der.seq(_der.seq(_der.enc_oid(_PBES2), _der.seq(kdf, enc)), _der.tlv(4, ciphertext))
    b64 = binascii.b2a_base64(info, newline=False)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
        + lines
        + b"\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
