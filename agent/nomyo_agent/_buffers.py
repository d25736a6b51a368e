"""Large byte buffers made and filled without holding the GIL for long.

The agent's event loop shares the GIL with the worker threads, so every C call that holds the
GIL over megabytes holds up every other request. Two such calls are easy to make by accident:
``bytearray(n)`` zero-fills all ``n`` bytes at once, and a copy into new memory (a slice
assignment, ``b"".join``) runs with the GIL held while the kernel maps in and zeroes each page it
first touches. On the virtual machines measured here that first touch, not the copy, is most of
the cost: about 10 ms for 11 MiB, where the copy alone is about 1 ms.

Rules of this module:

- ``fresh(n)`` gives a ``bytearray`` of ``n`` bytes that are *not* set. The caller writes every
  byte before any is read or handed out, and never resizes it: a bytearray that grows may move,
  and a move leaves an unwiped copy of what it held. Over ``FRESH_FROM`` bytes its memory is
  a mapping of its own (the agent fixes glibc's mmap threshold, ``_libc.return_large_buffers``),
  whose pages the kernel zeroes as they are first written: nothing of an earlier buffer can show
  through. (In a process that leaves glibc's threshold to float, a client, the memory may come
  from the heap and hold bytes this process freed; they are overwritten before anything is read
  or sent.) Below, it is ``bytearray(n)``: zeroing that little costs less than the call to avoid
  it.
- ``copy(dst, at, src)`` is ``dst[at : at + len(src)] = src``; from ``COPY_FROM`` bytes on, a
  ``memmove`` called through ctypes, which lets go of the GIL for the copy and for the first
  touch of the pages it writes. Both buffers are held exported meanwhile (neither can be resized
  or freed), and their owners are the calling thread's: nothing else writes them during the
  copy.
- ``join(pieces)`` is ``b"".join(pieces)``; from ``FRESH_FROM`` bytes on, a fresh buffer filled by
  ``copy``.
- Where CPython's C API is not reachable (another interpreter), ``fresh`` is ``bytearray(n)`` and
  ``copy`` a slice assignment.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable

__all__ = ["COPY_FROM", "FRESH_FROM", "copy", "fresh", "join"]

FRESH_FROM = 1024 * 1024
COPY_FROM = 64 * 1024  # below, the ctypes call costs more than the copy holds the GIL


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (in the stable ABI since 3.11, so its layout is fixed)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_SIMPLE, _WRITABLE = 0, 1  # PyBUF_SIMPLE, PyBUF_WRITABLE: contiguous bytes


class _CApi:
    """The three calls of CPython's C API used here, as our own function objects: setting
    restype on ``ctypes.pythonapi``'s cached ones would change them for every other user."""

    def __init__(self, api: ctypes.PyDLL) -> None:
        new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)
        get = ctypes.PYFUNCTYPE(
            ctypes.c_int, ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int
        )
        release = ctypes.PYFUNCTYPE(None, ctypes.POINTER(_PyBuffer))
        self.new_bytearray: Callable[[None, int], bytearray] = new(
            ("PyByteArray_FromStringAndSize", api)
        )
        self.get_buffer = get(("PyObject_GetBuffer", api))
        self.release_buffer = release(("PyBuffer_Release", api))


def _c_api() -> _CApi | None:
    try:
        return _CApi(ctypes.pythonapi)
    except AttributeError:
        return None


_api = _c_api()


def fresh(n: int) -> bytearray:
    """A bytearray of ``n`` bytes, unset over ``FRESH_FROM`` (see the module rules)."""
    if n < FRESH_FROM or _api is None:
        return bytearray(n)
    # PyByteArray_FromStringAndSize(NULL, n) allocates without initialising.
    return _api.new_bytearray(None, n)


def copy(dst: bytearray | memoryview, at: int, src: bytes | bytearray | memoryview) -> None:
    """``dst[at : at + len(src)] = src`` (``src`` as its bytes), the GIL let go of when large."""
    source = memoryview(src).cast("B")
    n = len(source)
    if at < 0 or at + n > len(dst):
        raise ValueError(f"{n} bytes do not fit at {at} in {len(dst)}")
    if n < COPY_FROM or _api is None:
        memoryview(dst).cast("B")[at : at + n] = source
        return
    into, out_of = _PyBuffer(), _PyBuffer()
    _api.get_buffer(dst, ctypes.byref(into), _WRITABLE)  # raises if not writable bytes
    try:
        _api.get_buffer(source, ctypes.byref(out_of), _SIMPLE)
        try:
            target, source_at = into.buf, out_of.buf
            if target is None or source_at is None:  # not for a buffer of len(src) > 0
                raise BufferError("a buffer without memory")
            # ctypes.memmove is a foreign call: it runs without the GIL.
            ctypes.memmove(target + at, source_at, n)
        finally:
            _api.release_buffer(ctypes.byref(out_of))
    finally:
        _api.release_buffer(ctypes.byref(into))


def join(pieces: Iterable[bytes | bytearray | memoryview]) -> bytes | bytearray:
    """The pieces as one: ``bytes`` when small, else a fresh buffer filled by ``copy``."""
    views = [memoryview(piece).cast("B") for piece in pieces]
    total = sum(len(view) for view in views)
    if total < FRESH_FROM:
        return b"".join(views)
    out = fresh(total)
    at = 0
    for view in views:
        copy(out, at, view)
        at += len(view)
    return out
