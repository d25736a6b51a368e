"""Where the identity's PKCS#8 PEM is kept: the ``KeyStore`` contract and its backends.

Rules of this module and its backends:

- A ``KeyStore`` stores one value, the identity's PEM (encrypted PKCS#8 when the user chose a
  passphrase). ``load`` returns it in a ``SecretBuffer`` the caller closes; ``save`` takes any
  buffer. Every store passes the contract tests in ``tests/test_keystore.py``.
- Backend failures become ``KeyringUnavailableError`` or ``KeyringLockedError`` with a hint, at
  the store's boundary, ``from`` the original exception. Calls may block (D-Bus, an unlock
  prompt, fsync): the server runs them in a worker thread.
- ``check`` fails the same way as ``save`` would, without storing anything: the agent calls it
  before it asks for a passphrase or generates a key, so nobody types a passphrase twice only to
  learn that there is nowhere to keep the key.

The backends: ``KeyringStore`` (the OS keyring, ``_keyring_store``), ``FileStore`` (a 0600 file
for headless machines, chosen explicitly, ``_file_store``) and ``MemoryStore`` (tests). Their
names are re-exported here: callers import every store from this module.
"""

from __future__ import annotations

from typing import Protocol

from nomyo_agent._file_store import FILE_NAME, FileStore
from nomyo_agent._keyring_store import KeyringStore, default_backend
from nomyo_agent._secret import SecretBuffer

__all__ = [
    "FILE_NAME",
    "KEYSTORES",
    "FileStore",
    "KeyStore",
    "KeyringStore",
    "MemoryStore",
    "default_backend",
]

KEYSTORES = ("keyring", "file")  # config.toml's ``keystore`` and ``--keystore``


class KeyStore(Protocol):
    """One stored secret: the identity's PEM."""

    @property
    def backend_name(self) -> str:
        """What ``status`` shows, e.g. ``keyring.backends.SecretService.Keyring``."""
        ...

    def load(self) -> SecretBuffer | None:
        """The stored PEM in a new buffer (the caller closes it), or None if nothing is stored."""
        ...

    def save(self, pem: bytes | bytearray | memoryview) -> None:
        """Store ``pem``, replacing what was there."""
        ...

    def delete(self) -> None:
        """Remove the stored value; nothing happens if there is none."""
        ...

    def use_session_bus(self, address: str | None) -> None:
        """Reach the keyring through the session bus at ``address`` from now on (``None``: no
        bus); ``_sessionbus`` calls it for an agent started outside the desktop session."""
        ...

    @property
    def requires_passphrase(self) -> bool:
        """Whether this store keeps only passphrase-encrypted keys."""
        ...

    def check(self) -> None:
        """Raise the error ``save`` would raise if the store cannot be used now."""
        ...


class MemoryStore:
    """A KeyStore in this process's memory, for tests (it passes the same contract)."""

    backend_name = "memory"
    requires_passphrase = False

    def check(self) -> None:
        pass

    def __init__(self) -> None:
        self._value: SecretBuffer | None = None

    def load(self) -> SecretBuffer | None:
        return None if self._value is None else SecretBuffer.from_bytes(self._value.view)

    def save(self, pem: bytes | bytearray | memoryview) -> None:
        new = SecretBuffer.from_bytes(pem)
        self.delete()
        self._value = new

    def delete(self) -> None:
        if self._value is not None:
            self._value.close()
        self._value = None

    def use_session_bus(self, address: str | None) -> None:
        """Memory has no bus."""
