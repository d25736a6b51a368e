"""Who connected: the peer's pid/uid/gid from the kernel, and a name for the tray to show.

The credentials come from ``_sockdir.peer_credentials`` (SO_PEERCRED, getpeereid), which clients
use too. The uid is what the server checks; the name is only for display (``/proc/PID/comm``, or
the script name for interpreters, so that "python3" becomes "app.py (python3)").
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from nomyo_agent._state import Peer

__all__ = ["peer_of"]

_INTERPRETERS = ("python", "node", "ruby", "perl", "java")


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
    from nomyo_agent._sockdir import peer_credentials  # noqa: PLC0415 - POSIX only

    pid, uid, gid = peer_credentials(sock)
    return Peer(pid=pid, uid=uid, gid=gid, exe=_exe_name(pid))
