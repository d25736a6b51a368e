"""launchd's side of the agent's life on macOS: taking the socket launchd listens on.

The LaunchAgent plist (``launchd/ai.nomyo.agent.plist``, written by ``install-service``) names one
socket under ``Sockets``, key ``agent``; launchd binds it, and starts ``nomyo-agent serve`` on the
first connection. The agent takes the listening descriptor with ``launch_activate_socket(3)``
from libSystem. launchd needs no readiness message: queued connections wait in the backlog.

Rules: a no-op (``None``) on every other platform and when launchd did not start us; only
ctypes and the standard library, the C functions taken through ``_libc`` (libSystem is the C
library there); they are reached through a ``lib`` object so that the marshalling can be
exercised off macOS with a stand-in of the same C signature.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
import types
from typing import Any

from nomyo_agent._libc import c_function
from nomyo_agent._units import SOCKET_NAME

__all__ = ["LaunchdError", "activate_socket", "inherited_socket", "load_libsystem"]


# int launch_activate_socket(const char *name, int **fds, size_t *cnt);
ACTIVATE_ARGTYPES = (
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
    ctypes.POINTER(ctypes.c_size_t),
)
# ENOENT: no socket of that name in the plist; ESRCH: launchd did not start this process.
_NOT_ACTIVATED = {errno.ENOENT, errno.ESRCH}


class LaunchdError(OSError):
    """launchd refused the socket for another reason (``EALREADY``: taken once already)."""


def load_libsystem() -> Any:
    """``launch_activate_socket`` and ``free``, typed, from libSystem (``_libc``); macOS only."""
    return types.SimpleNamespace(
        launch_activate_socket=c_function(
            "launch_activate_socket", ctypes.c_int, ACTIVATE_ARGTYPES
        ),
        free=c_function("free", None, (ctypes.c_void_p,)),
    )


def activate_socket(name: str = SOCKET_NAME, lib: Any = None) -> list[int]:
    """The descriptors launchd holds for socket ``name``; ``[]`` when launchd did not start us.

    The array is allocated by launchd and freed here; the descriptors become the caller's.
    """
    lib = load_libsystem() if lib is None else lib
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    rc = lib.launch_activate_socket(name.encode(), ctypes.byref(fds), ctypes.byref(count))
    if rc in _NOT_ACTIVATED:
        return []
    if rc != 0:
        raise LaunchdError(rc, f"launchd did not hand over socket {name!r}: {os.strerror(rc)}")
    try:
        return [fds[i] for i in range(count.value)]
    finally:
        lib.free(ctypes.cast(fds, ctypes.c_void_p))


def inherited_socket(name: str = SOCKET_NAME, lib: Any = None) -> socket.socket | None:
    """The listening socket launchd passed for ``name``, non-blocking; ``None`` when none was.

    launchd may hand over one descriptor per address family; the agent's plist names a Unix
    path, so there is one, and any others are closed rather than leaked.
    """
    if lib is None and sys.platform != "darwin":
        return None
    fds = activate_socket(name, lib)
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return sock
