"""Public-key helpers shared by the agent and the development router.

Fingerprints are the SHA-256 of the DER SubjectPublicKeyInfo in lower-case hex, the form
``nomyo-agent status`` prints and pins store (``protocol.short_fingerprint`` is its short form).
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent.errors import BadRouterKeyError

__all__ = ["MIN_BITS", "fingerprint", "load_router_key", "public_pem"]

MIN_BITS = 2048  # routers reject smaller keys (PROTOCOL.md); so do we, both ways


def fingerprint(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_router_key(pem: str) -> rsa.RSAPublicKey:
    """Parse a router's ``/pki/public_key`` answer; refuse anything but RSA of 2048 bits or more."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii", "strict"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise BadRouterKeyError("the router key is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadRouterKeyError("the router key is not an RSA key")
    if key.key_size < MIN_BITS:
        raise BadRouterKeyError(f"the router key has {key.key_size} bits, under {MIN_BITS}")
    return key
