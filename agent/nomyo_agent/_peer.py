"""Who connected: the peer's pid/uid/gid from the kernel, and a name for the tray to show.

Linux: SO_PEERCRED. macOS/BSD: getpeereid(3) for uid/gid and LOCAL_PEERPID for the pid. The
uid is what the server checks; the name is only for display (``/proc/PID/comm``, or the script
name for interpreters, so that "python3" becomes "app.py (python3)").

``app_of`` is what approvals (``confirm``) remember an app by: the executable's path from the
kernel (``/proc/PID/exe``) and, for interpreters, the script's absolute path (or ``-m module``)
from its command line. The executable is the kernel's word; the script is only what the process
says it runs, and a process of the same user may say anything: approvals guard against a
surprise, not against malware already running as the user (docs/running.md says so).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import sys
from pathlib import Path

from nomyo_agent._state import Peer

__all__ = ["app_of", "peer_of"]

_INTERPRETERS = ("python", "node", "ruby", "perl", "java")
_LOCAL_PEERPID = 0x002  # <sys/un.h> on macOS
_SOL_LOCAL = 0


def _exe_name(pid: int) -> str:
    if not sys.platform.startswith("linux"):
        return f"pid {pid}"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    if comm.startswith(_INTERPRETERS):
        for arg in argv[1:]:
            if arg and not arg.startswith(b"-"):
                return f"{os.path.basename(arg.decode(errors='replace'))} ({comm})"
    return comm


def _script(argv: list[bytes], cwd: str) -> str | None:
    """The script an interpreter runs, from its argv: a path, ``-m module`` or ``-c``."""
    args = iter(argv[1:])
    for arg in args:
        if arg in (b"-m", b"-c"):
            following = next(args, b"") if arg == b"-m" else b""
            return f"{arg.decode()} {following.decode(errors='replace')}".strip()
        if arg.startswith(b"-") or not arg:
            continue
        return os.path.normpath(os.path.join(cwd, arg.decode(errors="replace")))
    return None


def app_of(pid: int) -> str:
    """What an approval remembers the app at ``pid`` by; ``"pid N"`` when it cannot be read."""
    if not sys.platform.startswith("linux") or pid <= 0:
        return f"pid {pid}"
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return f"pid {pid}"
    if os.path.basename(exe).startswith(_INTERPRETERS):
        script = _script(argv, cwd)
        if script:
            return f"{script} ({exe})"
    return exe


def peer_of(sock: socket.socket) -> Peer:
    if hasattr(socket, "SO_PEERCRED"):
        pid, uid, gid = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
        return Peer(pid=pid, uid=uid, gid=gid, exe=_exe_name(pid), app=app_of(pid))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if libc.getpeereid(sock.fileno(), ctypes.byref(uid), ctypes.byref(gid)) != 0:
        raise OSError(ctypes.get_errno(), "getpeereid failed")
    try:
        pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
    except OSError:
        pid = 0
    return Peer(pid=pid, uid=uid.value, gid=gid.value, exe=_exe_name(pid), app=app_of(pid))
