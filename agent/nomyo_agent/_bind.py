"""The agent's listening Unix socket: created, owned and removed by the process that bound it.

Rules:

- The folder follows ``_sockdir``'s rules (created 0700 if missing; an existing folder that is a
  symlink, someone else's or open to others is refused, never chmod-ed).
- The socket is 0600 from the moment it exists (bound under umask 0177, never chmod()ed after).
- An flock on ``<socket>.lock`` (opened ``O_NOFOLLOW``) serialises agents starting at once; held
  for the agent's life. But the lock is not what proves an old socket dead, since it can be
  deleted and a socket-activated agent has none: a socket is replaced only when a connect to it
  is refused.
- On the way out, the socket is unlinked only if it is still the inode this process bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys

from nomyo_agent._files import open_lock_file
from nomyo_agent.errors import AgentAlreadyRunning, InternalError, UsageError

__all__ = ["Bound", "bind_socket"]


class Bound:
    """A socket this process bound itself, with the lock it holds for its life."""

    def __init__(self, sock: socket.socket, path: str, lock_fd: int) -> None:
        self.sock = sock
        self.path = path
        self.lock_fd = lock_fd
        self.inode = os.stat(path).st_ino

    def remove(self) -> None:
        """Unlink the socket, unless another agent has replaced it since."""
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        os.close(self.lock_fd)


def bind_socket(path: str) -> Bound:
    """Create the listening socket at ``path`` per this module's rules."""
    if sys.platform == "win32":
        raise InternalError("Windows serves a named pipe (_winpipe), not a Unix socket")
    import fcntl  # noqa: PLC0415 - POSIX only

    from nomyo_agent import _sockdir  # noqa: PLC0415 - POSIX only

    _sockdir.private_folder(os.path.dirname(os.path.abspath(path)))
    lock_fd = open_lock_file(path + ".lock")
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise AgentAlreadyRunning(f"an agent is already running at {path}") from None
    try:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise UsageError(
                    f"{path} exists and is not a socket", hint="remove it or choose another path"
                )
            if _sockdir.socket_answers(path):
                raise AgentAlreadyRunning(
                    f"an agent is already running at {path} (it answers, though it holds no "
                    "lock file: socket-activated, or its lock file was deleted)"
                )
            os.unlink(path)  # refused: whoever bound it is gone
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        return Bound(sock, path, lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise
