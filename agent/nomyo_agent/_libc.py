"""The C library, loaded once, for the few calls Python does not wrap (mlock, prctl, ptrace,
getpeereid).

``dlopen(NULL)`` gives the symbols of the process and every library it has loaded, libc among
them, on Linux and macOS alike; Windows has no libc to speak of (None).
"""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["libc"]


@functools.cache
def libc() -> ctypes.CDLL | None:
    if sys.platform == "win32":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - exotic platforms without a loadable libc
        return None
