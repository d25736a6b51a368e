"""Throwaway RSA keys for tests, made once per test process (key generation is the slow part of
many tests: a 2048-bit key costs about 50 ms, a 4096-bit one about 0.5 s).

``rsa_key(bits, index)`` is the ``index``-th key of that size: two different indexes are two
different keys, the same index is the same key in every module. Tests that need a key nobody
else uses (memory residue, key generation itself) still make their own.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["rsa_key"]


@functools.cache
def rsa_key(bits: int = 2048, index: int = 0) -> rsa.RSAPrivateKey:
    del index  # only part of the cache key
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)
