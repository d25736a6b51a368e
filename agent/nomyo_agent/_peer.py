"""Who connected: the peer's pid/uid/gid from the kernel, and a name for the tray to show.

Linux: SO_PEERCRED. macOS/BSD: getpeereid(3) for uid/gid and LOCAL_PEERPID for the pid. The
uid is what the server checks; the name is only for display (``/proc/PID/comm``, or the script
name for interpreters, so that "python3" becomes "app.py (python3)").
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

__all__ = ["peer_of"]

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


def peer_of(sock: socket.socket) -> Peer:
    if hasattr(socket, "SO_PEERCRED"):
        pid, uid, gid = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
        return Peer(pid=pid, uid=uid, gid=gid, exe=_exe_name(pid))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if libc.getpeereid(sock.fileno(), ctypes.byref(uid), ctypes.byref(gid)) != 0:
        raise OSError(ctypes.get_errno(), "getpeereid failed")
    try:
        pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
    except OSError:
        pid = 0
    return Peer(pid=pid, uid=uid.value, gid=gid.value, exe=_exe_name(pid))
