"""Small files the agent and its starters write: lock files and atomically replaced state.

Standard library only (clients start agents through ``_launch``, which takes a lock file;
the devserver and the tray write their files here too).

Rules:

- A lock file is opened with ``O_NOFOLLOW`` and must then be a regular file of ours with one
  link: a symlink or hard link planted in its place cannot make us create or lock a file
  elsewhere.
- Every file written whole (state, service units, the devserver's key file, the tray's
  autostart entry) goes through ``atomic_write``: a temporary file in the same folder (mode 0600
  from creation), flushed to disk, then renamed over the old one (or linked, when it must not
  replace one): a reader sees the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nomyo_agent.errors import UnsafeSocketError

__all__ = ["atomic_write", "exclusive_lock", "lock_exclusive", "open_lock_file"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_lock_file(path: str | os.PathLike[str]) -> int:
    """Open (creating, 0600) the lock file at ``path``; refuse anything but our own plain file."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeSocketError(
                f"the lock file {path} is a symbolic link",
                hint=f"remove {path} (and check who put it there)",
            ) from exc
        raise
    if sys.platform == "win32":  # no symlink or owner games in a per-user temp folder to guard
        return fd
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_nlink != 1:
        os.close(fd)
        raise UnsafeSocketError(
            f"the lock file {path} is not a plain file of yours (owner uid {st.st_uid}, "
            f"{st.st_nlink} links)",
            hint=f"remove {path} (and check who put it there)",
        )
    return fd


def lock_exclusive(fd: int) -> None:
    """Block until this process holds the lock on ``fd`` (released when ``fd`` is closed)."""
    if sys.platform == "win32":
        import msvcrt  # noqa: PLC0415

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises OSError
    else:
        import fcntl  # noqa: PLC0415

        fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock file at ``path`` exclusively (blocking) for the ``with`` body."""
    fd = open_lock_file(path)
    try:
        lock_exclusive(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write(
    path: Path,
    data: bytes | bytearray | memoryview,
    *,
    mode: int = 0o600,
    replace: bool = True,
) -> bool:
    """Write ``data`` to ``path`` atomically (``mode``, 0600 unless said otherwise); creates the
    folder (0700). Returns whether ``path`` now holds ``data``.

    ``replace=False`` creates ``path`` only if it is absent (a hard link of the finished
    temporary file, which fails rather than replaces): two processes racing to create the same
    file leave exactly one whole file, and the loser gets False and reads the winner's.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # 0600 from creation
    try:
        # Unbuffered: the bytes go from the caller's buffer to the kernel, never through a copy
        # in a write buffer that nobody wipes (the data may be a private key).
        with os.fdopen(fd, "wb", buffering=0) as fh:
            view = memoryview(data).cast("B")
            while view:
                view = view[fh.write(view) :]
            if mode != 0o600 and sys.platform != "win32":
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already after os.replace
