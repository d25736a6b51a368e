"""The C library, loaded once, for the few calls Python does not wrap (mlock, prctl, ptrace,
getpeereid, and on macOS launchd's ``launch_activate_socket``): the one loader in the packages.

``dlopen(NULL)`` gives the symbols of the process and every library it has loaded, libc among
them, on Linux and macOS alike (on macOS that is libSystem, launchd's client calls included);
Windows has no libc to speak of (None).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

__all__ = ["c_function", "libc", "return_large_buffers"]


@functools.cache
def libc() -> ctypes.CDLL | None:
    if sys.platform == "win32":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - exotic platforms without a loadable libc
        return None


def c_function(name: str, restype: Any, argtypes: tuple[Any, ...]) -> Any:
    """The C library's function ``name`` with its C signature set.

    A fresh function object each time (``lib[name]``, not the attribute ``CDLL`` caches), so
    that the signature one caller sets is never another caller's. Raises ``OSError`` where
    there is no C library and ``AttributeError`` where it lacks ``name``.
    """
    lib = libc()
    if lib is None:
        raise OSError(f"no C library to call {name} in")
    function = lib[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Over the 256 KiB every socket read allocates (asyncio reads up to that much at a time), so
# that the per-request path keeps its heap; payloads and replies of a MiB and more are mapped.
_MMAP_FROM = 512 * 1024
# Fixing the mmap threshold leaves the trim threshold at glibc's 128 KiB: every socket read's
# 256 KiB then grew the heap's top and every free gave it back (a brk each way, and the first
# touch of its pages again, about 0.9 ms a read on the machines measured, on the event loop).
# The heap keeps up to this much free at its top instead.
_TRIM_FROM = 8 * 1024 * 1024


def return_large_buffers() -> bool:
    """Make glibc give large buffers back to the kernel when they are freed.

    glibc raises its mmap threshold each time a large mapped buffer is freed, after which
    buffers of that size come from the heaps of whichever threads made them, and stay there:
    an agent sealing 1 MiB payloads on worker threads kept about 90 MiB more at its peak than
    it used. Fixing the mmap threshold at ``_MMAP_FROM`` keeps each large buffer in its own
    mapping, unmapped (and so gone from the process) when freed; the trim threshold is fixed
    at ``_TRIM_FROM`` (see there). False where there is no glibc.
    """
    c = libc()
    try:
        mallopt = c.mallopt if c is not None else None
    except AttributeError:  # musl, macOS: their allocators return large blocks on their own
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_FROM)
    )
