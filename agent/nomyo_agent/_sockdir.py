"""Whose socket is it: the folder rules, the peer's uid, and proving a socket dead.

Standard library only: every client (library, CLI, tray) runs these checks before it sends a
byte, and the agent runs the same folder rules before it creates a file. Trust runs both ways:
prompts, passphrases and imported keys are secrets too, and the temp-dir fallback folder
``nomyo-agent-UID`` is a name another user can take first.

Rules (POSIX; a Windows pipe's owner is checked in ``_winpipe``):

- A socket folder is a real folder (not a symlink), owned by the user, with no group or other
  permission bits. A missing one is created 0700 by whoever starts an agent; an existing one is
  never chmod-ed into shape, because what is already inside it could be anyone's.
- Right after connecting, a client reads the peer's uid from the kernel (``SO_PEERCRED``,
  ``getpeereid``) and refuses any uid but its own.
- A socket is replaced only when a connect to it is refused: a live agent keeps its socket even
  when its lock file was deleted, or when it never had one (socket activation).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import struct
import sys

from nomyo_agent._libc import libc
from nomyo_agent.errors import UnsafeSocketError

# POSIX only (a Windows pipe's owner is checked in _winpipe): import it behind a platform test.
assert sys.platform != "win32"

__all__ = ["check_folder", "check_peer", "peer_credentials", "private_folder", "socket_answers"]

_LOCAL_PEERPID = 0x002  # <sys/un.h> on macOS
_SOL_LOCAL = 0
_LIVENESS_TIMEOUT = 2.0  # seconds; an agent's listen backlog answers long before this


def _who(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415 - POSIX only

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_folder(folder: str) -> bool:
    """Whether ``folder`` exists; raises ``UnsafeSocketError`` if it breaks this module's rules."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return False
    except PermissionError as exc:
        raise UnsafeSocketError(
            f"the agent's socket folder {folder} is out of your reach (permission denied): "
            f"it is not yours ({_who(os.getuid())})",
            hint="each user runs an agent of their own: unset NOMYO_AGENT_SOCK or point it at "
            "yours",
        ) from exc
    me = os.getuid()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeSocketError(
            f"the agent's socket folder {folder} is a symbolic link, owned by {_who(st.st_uid)}",
            hint=f"remove the link {folder}; the agent creates a real folder there",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketError(
            f"the agent's socket folder {folder} is not a folder",
            hint=f"remove {folder}, or choose another socket with --socket / NOMYO_AGENT_SOCK",
        )
    if st.st_uid != me:
        raise UnsafeSocketError(
            f"the agent's socket folder {folder} belongs to {_who(st.st_uid)}, "
            f"not to you ({_who(me)})"
        )
    if st.st_mode & 0o077:
        raise UnsafeSocketError(
            f"the agent's socket folder {folder} has mode {stat.S_IMODE(st.st_mode):04o}: "
            "other users may have put files in it (it must be 0700, owned by you)",
            hint=f"check what is in {folder}, then `chmod 700 {folder}`, or remove it",
        )
    return True


def private_folder(folder: str) -> None:
    """Create ``folder`` (0700, parents too) unless it exists; then check it."""
    old = os.umask(0o077)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass  # a symlink to nowhere, or a file: check_folder names it
    finally:
        os.umask(old)
    check_folder(folder)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """The connected peer's (pid, uid, gid) as the kernel reports them; pid 0 if unknown."""
    if hasattr(socket, "SO_PEERCRED"):
        pid, uid, gid = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
        return pid, uid, gid
    c = libc()
    if c is None:  # pragma: no cover - Windows checks the pipe's owner instead
        raise OSError(errno.ENOSYS, "no C library for getpeereid")
    cuid, cgid = ctypes.c_uint32(), ctypes.c_uint32()
    if c.getpeereid(sock.fileno(), ctypes.byref(cuid), ctypes.byref(cgid)) != 0:
        raise OSError(ctypes.get_errno(), "getpeereid failed")
    try:
        pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
    except OSError:
        pid = 0
    return pid, cuid.value, cgid.value


def check_peer(sock: socket.socket, path: str) -> None:
    """Refuse the process at the other end of ``sock`` unless it runs as our uid."""
    try:
        _pid, uid, _gid = peer_credentials(sock)
    except OSError as exc:
        raise UnsafeSocketError(
            f"cannot tell who listens at {path}: {exc}", hint="nothing was sent to it"
        ) from exc
    if uid != os.getuid():
        raise UnsafeSocketError(
            f"the process listening at {path} runs as {_who(uid)}, not as you "
            f"({_who(os.getuid())}); nothing was sent to it"
        )


def socket_answers(path: str) -> bool:
    """Whether something accepts connections at ``path`` (then it must not be replaced)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_LIVENESS_TIMEOUT)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError as exc:
        # A full backlog (EAGAIN) or a slow accept is a live listener; anything else that is
        # not "refused" is not proof of death either.
        return exc.errno != errno.ECONNREFUSED
    finally:
        probe.close()
    return True
