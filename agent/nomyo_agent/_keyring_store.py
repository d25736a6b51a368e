"""The identity's PEM in the OS keyring (Secret Service, macOS Keychain, Windows Credential
Locker) through ``keyring``: a ``KeyStore`` (see ``_keystore``).

Rules of this module:

- ``keyring`` only speaks ``str``. We make the one ``str`` we hand it, and take the one it hands
  us, and ``wipe`` both as soon as the call returns. Copies inside the backend (secretstorage,
  jeepney's D-Bus message buffers) are out of our reach; docs/key-custody.md lists them.
- The backend is the one the user chose (``PYTHON_KEYRING_BACKEND``, ``keyringrc.cfg``) or else
  ``keyring``'s pick among its *built-in* backends: a plug-in such as ``keyrings.alt`` or
  ``keyrings.cryptfile`` installed for some other program must never quietly become the place
  our private key lives (plain files, or a backend that blocks on stdin for a password).
- Where a backend caps an entry's size (Windows), the PEM is split over several entries, the
  parts written before the entry that points to them.
"""

from __future__ import annotations

import os
from typing import Any

import keyring
import keyring.backend
import keyring.core
import keyring.errors
from keyring.backends import chainer, fail

from nomyo_agent._secret import SecretBuffer, wipe
from nomyo_agent.errors import (
    AgentError,
    CorruptIdentityError,
    KeyringLockedError,
    KeyringUnavailableError,
)

__all__ = ["KeyringStore", "default_backend"]

SERVICE = "nomyo-agent"
USERNAME = "identity"

_UNTRUSTED_PLUGINS = ("keyrings.alt", "keyrings.cryptfile")


def _dotted(backend: object) -> str:
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


def _untrusted(backend: object) -> bool:
    if isinstance(backend, chainer.ChainerBackend):
        return any(_untrusted(b) for b in backend.backends)
    return type(backend).__module__.startswith(_UNTRUSTED_PLUGINS)


def default_backend() -> keyring.backend.KeyringBackend:
    """The user's explicit choice if any, else the best built-in ``keyring`` backend."""
    explicit = keyring.core.load_env() or keyring.core.load_config()
    if explicit is not None:
        return explicit
    chosen = keyring.get_keyring()
    if not _untrusted(chosen):
        return chosen
    # Not get_all_keyring()'s list: it is computed once per process and would remember a bus
    # that was missing the first time. Its first call is still what registers the backends.
    keyring.backend.get_all_keyring()
    builtin = [
        cls
        for cls in keyring.backend.KeyringBackend.get_viable_backends()
        if cls.__module__.startswith("keyring.backends.")
        and not issubclass(cls, (chainer.ChainerBackend, fail.Keyring))
    ]
    if not builtin:
        return fail.Keyring()  # type: ignore[no-untyped-call]
    best: keyring.backend.KeyringBackend = max(builtin, key=lambda cls: cls.priority)()
    return best


def _translate(exc: Exception, backend: str) -> AgentError:
    """A backend's failure as one of our errors; the caller raises it ``from exc``."""
    if isinstance(exc, keyring.errors.KeyringLocked):
        return KeyringLockedError("the keyring is locked")
    if isinstance(exc, keyring.errors.NoKeyringError):
        return KeyringUnavailableError("no OS keyring is available")
    if isinstance(exc, keyring.errors.InitError) and "dismissed" in str(exc).lower():
        return KeyringUnavailableError(
            "the keyring asked to be unlocked or created and nobody answered",
            "unlock or create your login keyring (e.g. in Seahorse) in this session and retry",
        )
    if isinstance(exc, OSError):  # jeepney: no bus at DBUS_SESSION_BUS_ADDRESS, or refused
        return KeyringUnavailableError(
            f"cannot reach the keyring service of {backend} ({exc.strerror or exc})"
        )
    return KeyringUnavailableError(f"the keyring {backend} failed ({type(exc).__name__}: {exc})")


CHUNKED = "nomyo-agent-chunks:"  # the main entry's value when the PEM is split over entries
WINDOWS_CHUNK = 1000  # characters; 2560 bytes of UTF-16 is the cap, with room to spare
_WINDOWS_BACKEND = "keyring.backends.Windows"


class KeyringStore:
    """The identity in the OS keyring (Secret Service, macOS Keychain, Windows Credential Locker).

    Usage (a literal block: it needs a keyring and a PEM in a ``SecretBuffer``)::

        store = KeyringStore()
        store.save(pem_buffer.view)
        with store.load() as stored:
            ...
    """

    def __init__(
        self,
        service: str = SERVICE,
        username: str = USERNAME,
        backend: keyring.backend.KeyringBackend | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self._service = service
        self._username = username
        self._backend = backend
        self._chunk_size = chunk_size

    def _ring(self) -> keyring.backend.KeyringBackend:
        if self._backend is None:
            try:
                self._backend = default_backend()
            except (ImportError, AttributeError, ValueError, TypeError) as exc:
                raise KeyringUnavailableError(
                    f"the keyring backend could not be loaded ({exc})",
                    "check PYTHON_KEYRING_BACKEND and keyringrc.cfg",
                ) from exc
            except Exception as exc:  # the named backend is there but not viable (no bus ...)
                named = os.environ.get("PYTHON_KEYRING_BACKEND", "the default backend")
                raise _translate(exc, named) from exc
        return self._backend

    @property
    def backend_name(self) -> str:
        try:
            return _dotted(self._ring())
        except KeyringUnavailableError:
            return "unavailable"

    def _chunk(self) -> int | None:
        """How many characters one entry may hold, if the backend has a cap.

        Windows' Credential Locker caps a credential at 2560 bytes of UTF-16 (keyring issue
        #540), under an RSA-4096 PEM's ~3.3 KB: there the PEM is split over several entries.
        """
        if self._chunk_size is not None:
            return self._chunk_size
        return WINDOWS_CHUNK if _dotted(self._ring()).startswith(_WINDOWS_BACKEND) else None

    def _call(self, method: str, *args: Any, username: str | None = None) -> Any:
        ring = self._ring()
        try:
            return getattr(ring, method)(self._service, username or self._username, *args)
        except keyring.errors.PasswordDeleteError:
            if method == "delete_password":
                return None  # nothing stored: delete is idempotent
            raise
        except AgentError:
            raise
        except Exception as exc:  # D-Bus, OS and backend errors all end here, translated
            raise _translate(exc, _dotted(ring)) from exc

    def load(self) -> SecretBuffer | None:
        value = self._call("get_password")
        if value is None:
            return None
        if isinstance(value, str) and value.startswith(CHUNKED):
            return self._load_chunks(value)
        if not isinstance(value, str):
            raise CorruptIdentityError("the keyring returned something that is not text")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CorruptIdentityError("the stored identity is not valid text") from exc
        finally:
            wipe(value)
        try:
            return SecretBuffer.from_bytes(raw)
        finally:
            wipe(raw)

    def save(self, pem: bytes | bytearray | memoryview) -> None:
        try:
            # str(buffer, codec) decodes straight from the buffer: one str, no bytes copy.
            text = str(memoryview(pem).cast("B"), "ascii")
        except UnicodeDecodeError as exc:
            raise CorruptIdentityError("a PEM key must be ASCII text") from exc
        try:
            chunk = self._chunk()
            if chunk is None or len(text) <= chunk:
                self._call("set_password", text)
                self._delete_chunks(1)
                return
            parts = [text[i : i + chunk] for i in range(0, len(text), chunk)]
            try:
                # The parts first, the pointer last: a reader never follows a pointer to parts
                # that are not written yet.
                for number, part in enumerate(parts, 1):
                    self._call("set_password", part, username=f"{self._username}.{number}")
                self._call("set_password", f"{CHUNKED}{len(parts)}")
                self._delete_chunks(len(parts) + 1)
            finally:
                for part in parts:
                    wipe(part)
        finally:
            wipe(text)

    def _load_chunks(self, pointer: str) -> SecretBuffer:
        try:
            count = int(pointer[len(CHUNKED) :])
        except ValueError:
            raise CorruptIdentityError("the stored identity's chunk count is unreadable") from None
        parts: list[str] = []
        try:
            for number in range(1, count + 1):
                part = self._call("get_password", username=f"{self._username}.{number}")
                if not isinstance(part, str):
                    raise CorruptIdentityError(f"part {number} of the stored identity is missing")
                parts.append(part)
            size = sum(len(part) for part in parts)
            buffer = SecretBuffer(size)
            offset = 0
            for part in parts:
                buffer.view[offset : offset + len(part)] = part.encode("ascii")
                offset += len(part)
            return buffer
        finally:
            for part in parts:
                wipe(part)

    def _delete_chunks(self, first: int) -> None:
        """Remove parts numbered ``first`` and up, left over from a longer value."""
        number = first
        while self._call("get_password", username=f"{self._username}.{number}") is not None:
            self._call("delete_password", username=f"{self._username}.{number}")
            number += 1

    def delete(self) -> None:
        self._call("delete_password")
        self._delete_chunks(1)

    def use_session_bus(self, address: str | None) -> None:
        # secretstorage opens a new D-Bus connection per call from the environment, so changing
        # the variable is enough for the next call; the backend is picked again because the
        # first pick may have been made when no Secret Service was reachable.
        if address is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
        self._backend = None

    requires_passphrase = False

    def check(self) -> None:
        # keyring's own viability test (for the Secret Service: a bus that answers and a
        # service on it), without touching a collection: creating or unlocking one is for save.
        ring = self._ring()
        if isinstance(ring, fail.Keyring):
            raise KeyringUnavailableError("no OS keyring is available")
        try:
            viable = type(ring).priority > 0
        except Exception as exc:  # the named backend's bus or service is missing
            raise _translate(exc, _dotted(ring)) from exc
        if not viable:
            raise KeyringUnavailableError(f"the keyring {_dotted(ring)} cannot be used here")
