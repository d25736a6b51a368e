"""Large byte buffers made without one long pass over their memory.

The agent's event loop shares the GIL with the worker threads, so every single C call that
touches megabytes holds up every other request for milliseconds (tens of them on a busy
machine). ``bytearray(n)`` is such a call: it zero-fills all ``n`` bytes at once (about 4 ms for
an 11 MiB frame), and ``b"".join`` copies all of its pieces in one call.

Rules of this module:

- ``fresh(n)`` gives a ``bytearray`` of ``n`` bytes that are *not* set. The caller writes every
  byte before any is read or handed out, and never resizes it: a bytearray that grows may move,
  and a move leaves an unwiped copy of what it held. Over ``FRESH_FROM`` bytes its memory is
  a mapping of its own (the agent fixes glibc's mmap threshold, ``_libc.return_large_buffers``),
  whose pages the kernel zeroes as they are first written: the cost of the zero-fill is spread
  over the writes that fill the buffer, and nothing of an earlier buffer can show through. (In
  a process that leaves glibc's threshold to float, a client, the memory may come from the heap
  and hold bytes this process freed; they are overwritten before anything is read or sent.)
  Below, it is ``bytearray(n)``: zeroing that little costs less than the call to avoid it.
- ``join(pieces)`` is ``b"".join(pieces)``; from ``FRESH_FROM`` bytes on, a ``bytearray`` copied
  ``SLICE`` bytes at a time, so that the interpreter may switch threads between the copies.
- Where CPython's C API is not reachable (another interpreter), ``fresh`` is ``bytearray(n)``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable

__all__ = ["FRESH_FROM", "SLICE", "fresh", "join"]

FRESH_FROM = 1024 * 1024
SLICE = 1024 * 1024  # a memcpy of this much takes about a tenth of a millisecond


def _c_api() -> Callable[[None, int], bytearray] | None:
    try:
        api = ctypes.pythonapi
    except AttributeError:
        return None
    # Our own function object: setting restype on ctypes.pythonapi's cached one would change it
    # for every other user in the process.
    prototype = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)
    try:
        return prototype(("PyByteArray_FromStringAndSize", api))
    except AttributeError:
        return None


_new = _c_api()


def fresh(n: int) -> bytearray:
    """A bytearray of ``n`` bytes, unset over ``FRESH_FROM`` (see the module rules)."""
    if n < FRESH_FROM or _new is None:
        return bytearray(n)
    # PyByteArray_FromStringAndSize(NULL, n) allocates without initialising.
    return _new(None, n)


def join(pieces: Iterable[bytes | bytearray | memoryview]) -> bytes | bytearray:
    """The pieces as one: ``bytes`` when small, else a fresh buffer copied a slice at a time."""
    views = [memoryview(piece).cast("B") for piece in pieces]
    total = sum(len(view) for view in views)
    if total < FRESH_FROM:
        return b"".join(views)
    out = fresh(total)
    at = 0
    for view in views:
        for offset in range(0, len(view), SLICE):
            piece = view[offset : offset + SLICE]
            out[at : at + len(piece)] = piece
            at += len(piece)
    return out
