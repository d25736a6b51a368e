"""The development router's own RSA key: ephemeral, or kept in a ``0600`` PEM file.

Rules of this module:

- A key file is PKCS#8 PEM without a passphrase (this is a development router), created with
  mode ``0600`` from the first byte and published whole, never over an existing file
  (``nomyo_agent._files.atomic_write`` with ``replace=False``), and
  refused, as ssh refuses, when group or others may read it.
- Key bytes are read into a ``bytearray`` and wiped once parsed; the PEM written at generation
  is wiped once written. They are never held in a ``str``.
- ``RouterKeys`` swaps the key as one reference, so a request sees either the old key or the
  new one, never a mix; rotation keeps the file untouched (a restart goes back to it).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent._files import atomic_write
from nomyo_agent._keys import MIN_BITS, fingerprint, public_pem
from nomyo_agent._secret import wipe

__all__ = ["KeyFileError", "RouterKey", "RouterKeys", "generate", "load_or_create"]


class KeyFileError(Exception):
    """The key file cannot be used; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class RouterKey:
    """One router key with its PEM and fingerprint, computed once."""

    private: rsa.RSAPrivateKey
    pem: str
    fingerprint: str

    @classmethod
    def of(cls, private: rsa.RSAPrivateKey) -> RouterKey:
        public = private.public_key()
        return cls(private, public_pem(public), fingerprint(public))


class RouterKeys:
    """The current router key, replaceable at run time by ``rotate``."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._lock = threading.Lock()
        self._current = RouterKey.of(key)

    @property
    def current(self) -> RouterKey:
        return self._current

    def rotate(self, key: rsa.RSAPrivateKey | None = None) -> RouterKey:
        """Switch to ``key``, or to a fresh key of the current size; returns the new key."""
        with self._lock:
            new = key or generate(self._current.private.key_size)
            self._current = RouterKey.of(new)
            return self._current


def generate(bits: int = 4096) -> rsa.RSAPrivateKey:
    if bits < MIN_BITS:
        raise ValueError(f"router keys need at least {MIN_BITS} bits, not {bits}")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _read(path: Path) -> rsa.RSAPrivateKey:
    if sys.platform != "win32":
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} is readable by others (mode {mode:04o})",
                f"run `chmod 600 {path}`",
            )
    size = path.stat().st_size
    buf = bytearray(size)
    try:
        with path.open("rb", buffering=0) as f:
            got = f.readinto(buf)
        if got != size:
            raise KeyFileError(f"key file {path} changed while being read", "try again")
        try:
            key = serialization.load_pem_private_key(buf, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(
                f"key file {path} is not an unencrypted PEM private key",
                "delete it to have a new one generated, or pass another --key-file",
            ) from exc
    finally:
        wipe(buf)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_BITS:
        raise KeyFileError(
            f"key file {path} does not hold an RSA key of {MIN_BITS} bits or more",
            "delete it to have a new one generated, or pass another --key-file",
        )
    return key


def _write_new(path: Path, key: rsa.RSAPrivateKey) -> bool:
    """Create ``path`` holding ``key``; False when another process created it first."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # Never replaces: a concurrent start that linked its key first keeps it.
        return atomic_write(path, pem, replace=False)
    finally:
        wipe(pem)


def load_or_create(path: str | os.PathLike[str], bits: int = 4096) -> rsa.RSAPrivateKey:
    """The key kept in ``path``, generated (``bits`` bits) and saved there if it is missing."""
    file = Path(path)
    if file.exists():
        return _read(file)
    key = generate(bits)
    if not _write_new(file, key):
        return _read(file)  # a concurrent start won the race: use its key
    return key
