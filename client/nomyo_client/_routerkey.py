"""The size of a router's RSA key, read from its PEM without a cryptography library.

Rules of this module: pure, no I/O, and it never decides that a key is good. It only measures
the modulus of an RSA ``SubjectPublicKeyInfo`` PEM (what ``/pki/public_key`` serves), so that a
key too large to be a router's is refused before the agent spends effort on it; anything it
cannot read is left to the agent, which judges every key it seals to.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

__all__ = ["MAX_ROUTER_KEY_BITS", "rsa_bits"]

# OpenSSL's own ceiling for RSA public-key operations; no router uses more.
MAX_ROUTER_KEY_BITS: Final = 16384

_BEGIN, _END = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
_RSA_ENCRYPTION: Final = bytes.fromhex("06092a864886f70d010101")  # OID 1.2.840.113549.1.1.1


def _element(der: bytes, pos: int, tag: int) -> tuple[int, int]:
    """The (start, end) of the contents of the DER element at ``pos``, which must be ``tag``."""
    if pos + 2 > len(der) or der[pos] != tag:
        raise ValueError("unexpected DER element")
    length, pos = der[pos + 1], pos + 2
    if length & 0x80:  # long form: the next (length & 0x7F) bytes hold the length
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("bad DER length")
        length, pos = int.from_bytes(der[pos : pos + count], "big"), pos + count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return pos, pos + length


def rsa_bits(pem: str) -> int | None:
    """The modulus size in bits of an RSA public key PEM; None if it is not one we can read."""
    lines = [line.strip() for line in pem.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _BEGIN or _END not in lines:
        return None
    try:
        der = base64.b64decode("".join(lines[1 : lines.index(_END)]), validate=True)
        start, _ = _element(der, 0, 0x30)  # SubjectPublicKeyInfo
        alg_start, alg_end = _element(der, start, 0x30)  # AlgorithmIdentifier
        if not der[alg_start:alg_end].startswith(_RSA_ENCRYPTION):
            return None
        bits_start, _ = _element(der, alg_end, 0x03)  # BIT STRING, first byte: unused bits
        key_start, _ = _element(der, bits_start + 1, 0x30)  # RSAPublicKey
        mod_start, mod_end = _element(der, key_start, 0x02)  # modulus
    except (ValueError, binascii.Error):
        return None
    return int.from_bytes(der[mod_start:mod_end], "big").bit_length()
