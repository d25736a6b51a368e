"""Secret bytes: one buffer type for key material, and ``wipe`` for the copies we cannot avoid.

Rules of this module:

- Every byte of a private key or passphrase that the agent keeps for longer than one call lives
  in a ``SecretBuffer``: an anonymous mapping of its own (never the Python heap, whose freed
  blocks are reused without being cleared), ``mlock``ed so it never reaches swap,
  ``MADV_DONTDUMP`` so it never reaches a core dump, zeroed on ``close`` (and on garbage
  collection), with a ``repr`` that shows only the size. It cannot be pickled or copied.
- Locking and dump exclusion are best effort: where ``mlock`` fails (RLIMIT_MEMLOCK, no
  privilege, an OS without it) the buffer still works and still zeroes; ``locked`` and
  ``dontdump`` say what the OS actually granted, so ``status`` can report it truthfully.
- ``wipe`` zeroes a buffer in place. For immutable ``bytes``/``str`` it writes into the object's
  storage with ``ctypes.memset``: CPython-specific and only for objects the caller created and
  owns (a key from ``os.urandom``, the ``str`` a keyring backend returned). It never touches
  objects that may be shared (empty and one-character values, interned strings, subclasses).

Example::

    >>> with SecretBuffer.from_bytes(b"hunter2") as buf:
    ...     bytes(buf.view[:6])
    b'hunter'
    >>> buf
    <SecretBuffer 7 bytes, closed>
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import sys
from types import TracebackType
from typing import Any, NoReturn

from nomyo_agent._libc import libc

__all__ = ["SecretBuffer", "wipe"]


_libc: Any = libc()


def _lock(addr: int, size: int) -> bool:
    """mlock (VirtualLock on Windows); False when the OS refuses."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
        return bool(kernel32.VirtualLock(ctypes.c_void_p(addr), ctypes.c_size_t(size)))
    if _libc is None:  # pragma: no cover
        return False
    return bool(_libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) == 0)


def _unlock(addr: int, size: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        ctypes.windll.kernel32.VirtualUnlock(  # type: ignore[attr-defined,unused-ignore]
            ctypes.c_void_p(addr), ctypes.c_size_t(size)
        )
    elif _libc is not None:
        _libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(size))


class SecretBuffer:
    """A fixed-size, page-aligned, locked, undumpable, zero-on-close byte buffer.

    ``view`` is a writable ``memoryview`` of exactly ``len(buf)`` bytes; slices of it are fine,
    copies of it (``bytes(buf.view)``) defeat the point. ``close`` is idempotent: it zeroes,
    unlocks and unmaps. If a caller still holds a slice of ``view`` the mapping cannot be
    unmapped yet; it is zeroed all the same and unmapped when that slice goes away.
    """

    __slots__ = ("_addr", "_closed", "_dontdump", "_locked", "_mm", "_size", "_view")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("secret buffer size must be >= 0")
        self._size = size
        self._closed = False
        self._mm: mmap.mmap | None = None
        self._addr = 0
        if size == 0:
            # An empty mapping is not allowed; nothing to lock or hide either.
            self._view = memoryview(bytearray())
            self._locked = True
            self._dontdump = True
            return
        self._mm = mmap.mmap(-1, size)
        anchor = ctypes.c_char.from_buffer(self._mm)
        self._addr = ctypes.addressof(anchor)
        del anchor  # drop the buffer export at once, or the mapping could never be closed
        self._locked = _lock(self._addr, size)
        self._dontdump = False
        advice = getattr(mmap, "MADV_DONTDUMP", None)
        if advice is not None:
            try:
                self._mm.madvise(advice)
                self._dontdump = True
            except OSError:
                self._dontdump = False
        self._view = memoryview(self._mm)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SecretBuffer:
        """A new buffer holding a copy of ``data`` (the caller still owns, and wipes, ``data``)."""
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        buf = cls(src.nbytes)
        buf.view[:] = src
        return buf

    def __len__(self) -> int:
        return self._size

    @property
    def view(self) -> memoryview:
        """The buffer's bytes, writable; raises ``ValueError`` once closed."""
        if self._closed:
            raise ValueError("secret buffer is closed")
        return self._view

    @property
    def locked(self) -> bool:
        """True when the OS granted ``mlock`` (an empty buffer counts as locked)."""
        return self._locked

    @property
    def dontdump(self) -> bool:
        """True when the OS accepted ``MADV_DONTDUMP`` for this buffer."""
        return self._dontdump

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Zero, unlock and unmap; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._mm is None:
            return
        ctypes.memset(self._addr, 0, self._size)
        if self._locked:
            _unlock(self._addr, self._size)
        # BufferError: someone still holds a slice of the view, or an export of it (a cipher
        # context); the zeroed mapping is then unmapped when the last of those goes away.
        with contextlib.suppress(BufferError):
            self._view.release()
            self._mm.close()

    def __enter__(self) -> SecretBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "locked" if self._locked else "not locked"
        return f"<SecretBuffer {self._size} bytes, {state}>"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a SecretBuffer cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("a SecretBuffer cannot be copied")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError("a SecretBuffer cannot be copied")


# --- wipe ------------------------------------------------------------------------------------

# ctypes.memset is a foreign call, so it lets go of the GIL, and taking the GIL back can wait
# behind a worker thread for a switch interval and a wake-up (tenths of a millisecond each on
# the machines measured; a small open on the event loop wiped four times). Zeroing bytes takes
# no time worth sharing: wipes under ZERO_RELEASING bytes keep the GIL, through the same libc
# function called as ctypes calls the interpreter's own API.
_ZERO_RELEASING = 256 * 1024


def _holding(function: Any) -> Any:
    """``function`` (libc's memset) called as the interpreter's own API is: GIL held."""
    address = ctypes.cast(function, ctypes.c_void_p).value
    if address is None:  # not a function at all: keep the one that lets go of the GIL
        return function
    prototype = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    return prototype(address)


_memset_holding = _holding(ctypes.memset)


def _zero(address: int, n: int) -> None:
    (ctypes.memset if n >= _ZERO_RELEASING else _memset_holding)(address, 0, n)


# Where CPython keeps the characters of an exact ``bytes`` object: PyBytesObject ends with
# ``char ob_sval[1]``, so the data starts one byte before the end of the fixed part.
_BYTES_DATA = bytes.__basicsize__ - 1
# Sizes of the fixed part of compact str objects, measured rather than hard-coded because they
# change between versions (3.12 dropped ``wstr``): an ASCII one, and a non-ASCII one (UCS-2).
_ASCII_HEADER = sys.getsizeof("") - 1
_COMPACT_HEADER = sys.getsizeof(chr(0x100)) - 2 * 2
# PyASCIIObject: ob_refcnt, ob_type, length, hash, then the ``state`` bit field whose low bits
# are interned:2, kind:3, compact:1, ascii:1 (CPython 3.10 to 3.14, default builds).
_STATE_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p) + 2 * ctypes.sizeof(ctypes.c_ssize_t)


def _wipe_str(s: str) -> None:
    n = len(s)
    if type(s) is not str or n <= 1 or sys.implementation.name != "cpython":
        return
    state = ctypes.c_ubyte.from_address(id(s) + _STATE_OFFSET).value
    interned, kind, compact, ascii_ = state & 3, (state >> 2) & 7, (state >> 5) & 1, state >> 6 & 1
    if interned or not compact:
        return  # shared with every other use of the same text, or stored elsewhere: leave it
    offset = _ASCII_HEADER if ascii_ else _COMPACT_HEADER
    # Cross-check the bit field against the object's size; any disagreement (a layout we do not
    # know, a cached UTF-8 copy we cannot reach) means we do not write at all.
    if kind not in (1, 2, 4) or sys.getsizeof(s) != offset + (n + 1) * kind:
        return
    if bool(ascii_) != s.isascii():
        return
    _zero(id(s) + offset, n * kind)


def wipe(obj: bytes | bytearray | memoryview | str) -> None:
    """Zero ``obj`` in place.

    ``bytearray`` and writable ``memoryview``: always. A read-only ``memoryview`` of ``bytes``
    wipes that ``bytes``. ``bytes`` and ``str``: CPython only, and only for objects that cannot
    be shared (see the module rules); call it only on values you created and nobody else holds.
    """
    if isinstance(obj, memoryview):
        if obj.readonly:
            if isinstance(obj.obj, bytes):
                wipe(obj.obj)
                return
            raise TypeError("cannot wipe a read-only memoryview")
        if obj.nbytes:
            flat = obj if obj.c_contiguous and obj.format == "B" else obj.cast("B")
            target = (ctypes.c_char * flat.nbytes).from_buffer(flat)
            _zero(ctypes.addressof(target), flat.nbytes)
            del target
        return
    if isinstance(obj, bytearray):
        if obj:
            target = (ctypes.c_char * len(obj)).from_buffer(obj)
            _zero(ctypes.addressof(target), len(obj))
            del target
        return
    if isinstance(obj, bytes):
        # The empty bytes and the 256 one-byte values are process-wide singletons; subclasses
        # lay out their data elsewhere.
        if type(obj) is bytes and len(obj) > 1 and sys.implementation.name == "cpython":
            _zero(id(obj) + _BYTES_DATA, len(obj))
        return
    if isinstance(obj, str):
        _wipe_str(obj)
        return
    raise TypeError(f"cannot wipe a {type(obj).__name__}")
