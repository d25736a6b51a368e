"""Who connected: the peer's pid/uid/gid from the kernel, and a name for the tray to show.

The credentials come from ``_sockdir.peer_credentials`` (SO_PEERCRED, getpeereid), which clients
use too. The uid is what the server checks; the name is only for display (``/proc/PID/comm``, or
the script name for interpreters, so that "python3" becomes "app.py (python3)").

``app_of`` is what approvals (``confirm``) remember an app by: the executable's path from the
kernel (``/proc/PID/exe``) and, for interpreters, the script's absolute path (or ``-m module``)
from its command line. The executable is the kernel's word; the script is only what the process
says it runs, and a process of the same user may say anything: approvals guard against a
surprise, not against malware already running as the user (docs/running.md says so).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from nomyo_agent._state import Peer

__all__ = ["app_of", "peer_of"]

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
    from nomyo_agent._sockdir import peer_credentials  # noqa: PLC0415 - POSIX only

    pid, uid, gid = peer_credentials(sock)
    return Peer(pid=pid, uid=uid, gid=gid, exe=_exe_name(pid), app=app_of(pid))
