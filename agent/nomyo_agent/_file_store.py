"""The identity's PEM in a 0600 file in the state folder, for headless machines
(``keystore = "file"``, chosen explicitly): a ``KeyStore`` (see ``_keystore``).

Rules of this module:

- It keeps the very bytes the keyring entry would hold (passphrase-encrypted PKCS#8, same KDF)
  and refuses to keep a key with no passphrase (``requires_passphrase``): a file has no
  protection of its own.
- It refuses to read a file that others can read, that is not a regular file, or that is a link;
  it writes 0600 from creation (``O_EXCL``) and replaces the old file atomically.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from nomyo_agent._files import atomic_write
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import CorruptIdentityError, KeyringUnavailableError

__all__ = ["FILE_NAME", "FileStore"]

FILE_NAME = "identity.key"
MAX_FILE_BYTES = 16 * 1024 * 1024  # far above any PEM; a bound before reading


class FileStore:
    """The identity in a 0600 file, for headless machines (``keystore = "file"``). Usage::

    store = FileStore(Path("~/.local/state/nomyo-agent/identity.key").expanduser())
    """

    requires_passphrase = True

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def backend_name(self) -> str:
        return f"file {self.path}"

    def _folder(self) -> None:
        old = os.umask(0o077)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyringUnavailableError(
                f"cannot create {self.path.parent}: {exc.strerror}",
                "the state folder must be writable by the agent (XDG_STATE_HOME)",
            ) from exc
        finally:
            os.umask(old)

    def check(self) -> None:
        self._folder()
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise KeyringUnavailableError(
                f"cannot write the key file in {self.path.parent}",
                "the state folder must be writable by the agent (XDG_STATE_HOME)",
            )

    def load(self) -> SecretBuffer | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyringUnavailableError(
                f"cannot read {self.path}: {exc.strerror}", "check the file's owner and mode"
            ) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
                raise CorruptIdentityError(f"{self.path} is not a key file")
            if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077):
                raise KeyringUnavailableError(
                    f"{self.path} is open to other users (mode {stat.S_IMODE(st.st_mode):o})",
                    f"make it yours alone: `chmod 600 {self.path}`",
                )
            buffer = SecretBuffer(st.st_size)
            with open(fd, "rb", buffering=0, closefd=False) as fh:
                if fh.readinto(buffer.view) != st.st_size:
                    buffer.close()
                    raise CorruptIdentityError(f"{self.path} changed while it was read")
            return buffer
        finally:
            os.close(fd)

    def save(self, pem: bytes | bytearray | memoryview) -> None:
        self._folder()
        try:
            atomic_write(self.path, pem)  # 0600 from creation; a reader sees old or new, whole
        except OSError as exc:
            raise KeyringUnavailableError(
                f"cannot write {self.path}: {exc.strerror}",
                "the state folder must be writable by the agent (XDG_STATE_HOME)",
            ) from exc

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def use_session_bus(self, address: str | None) -> None:
        """A file has no bus."""
