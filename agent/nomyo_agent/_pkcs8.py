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
- Failing to decrypt (bad padding, plaintext that is not one DER SEQUENCE) is
  ``WrongPassphrase``; a malformed container is ``Pkcs8Error``.
"""

from __future__ import annotations

import binascii
import os
import re
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

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


# --- a strict DER subset: definite lengths in minimal form, one-byte tags ----------------------


class _Tlv(NamedTuple):
    tag: int
    value: memoryview


def _parse(data: memoryview) -> list[_Tlv]:
    """The TLVs that exactly fill ``data``; values are views into it (no copies)."""
    out: list[_Tlv] = []
    i, end = 0, len(data)
    while i < end:
        if end - i < 2 or data[i] & 0x1F == 0x1F:
            raise Pkcs8Error("malformed DER")
        tag, first = data[i], data[i + 1]
        i += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or end - i < count or data[i] == 0:
                raise Pkcs8Error("malformed DER length")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
            if length < 0x80:
                raise Pkcs8Error("malformed DER length")
        if end - i < length:
            raise Pkcs8Error("truncated DER")
        out.append(_Tlv(tag, data[i : i + length]))
        i += length
    return out


def _items(t: _Tlv, what: str, count: int | None = None) -> list[_Tlv]:
    """The items of the SEQUENCE ``t``, ``count`` of them when given."""
    if t.tag != 0x30:
        raise Pkcs8Error(f"malformed {what}")
    items = _parse(t.value)
    if count is not None and len(items) != count:
        raise Pkcs8Error(f"malformed {what}")
    return items


def _int(t: _Tlv) -> int:
    v = t.value
    if t.tag != 0x02 or not v or v[0] & 0x80 or (len(v) > 1 and v[0] == 0 and v[1] < 0x80):
        raise Pkcs8Error("malformed DER integer")
    return int.from_bytes(v, "big")


def _oid(t: _Tlv) -> str:
    v = bytes(t.value)
    if t.tag != 0x06 or not v or v[-1] & 0x80:
        raise Pkcs8Error("malformed DER object identifier")
    arcs, acc = [], 0
    for byte in v:
        acc = acc << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(acc)
            acc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _enc_int(n: int) -> bytes:
    return _tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _enc_oid(dotted: str) -> bytes:
    a, b, *rest = (int(x) for x in dotted.split("."))
    body = bytearray([40 * a + b])
    for arc in rest:
        chunk, left = [arc & 0x7F], arc >> 7
        while left:
            chunk.append(0x80 | left & 0x7F)
            left >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


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
    top = _parse(der)
    if len(top) != 1:
        raise Pkcs8Error("malformed EncryptedPrivateKeyInfo")
    algo_tlv, data = _items(top[0], "EncryptedPrivateKeyInfo", 2)
    algo = _items(algo_tlv, "AlgorithmIdentifier", 2)
    if _oid(algo[0]) != _PBES2:
        raise Pkcs8Error("the key is not encrypted with PBES2")
    kdf, enc = _items(algo[1], "PBES2-params", 2)
    kdf_oid, kdf_params = _items(kdf, "keyDerivationFunc", 2)
    if _oid(kdf_oid) != _PBKDF2:
        raise Pkcs8Error("the key's PBES2 uses a key derivation other than PBKDF2")
    enc_oid, iv = _items(enc, "encryptionScheme", 2)
    key_len = _AES_CBC.get(_oid(enc_oid))
    if key_len is None or iv.tag != 0x04 or len(iv.value) != 16:
        raise Pkcs8Error("the key is encrypted with a cipher other than AES-CBC")
    params = _items(kdf_params, "PBKDF2-params")
    if len(params) < 2 or params[0].tag != 0x04:
        raise Pkcs8Error("malformed PBKDF2-params")
    iterations = _int(params[1])
    prf = _HMAC_SHA1
    for extra in params[2:]:
        if extra.tag == 0x02 and _int(extra) != key_len:  # the optional keyLength
            raise Pkcs8Error("the PBKDF2 key length does not match the cipher")
        if extra.tag == 0x30:
            prf = _oid(_items(extra, "prf")[0])
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
        (only,) = _parse(body)  # one DER SEQUENCE filling the plaintext, else not our key
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
    prf = _seq(_enc_oid(_HMAC_SHA256), b"\x05\x00")
    kdf = _seq(_enc_oid(_PBKDF2), _seq(_tlv(4, salt), _enc_int(iterations), prf))
    enc = _seq(_enc_oid(_AES256_CBC), _tlv(4, iv))
    info = _seq(_seq(_enc_oid(_PBES2), _seq(kdf, enc)), _tlv(4, ciphertext))
    b64 = binascii.b2a_base64(info, newline=False)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
        + lines
        + b"\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
