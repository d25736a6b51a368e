"""The Assuan line protocol (what pinentry speaks), sans I/O: bytes in, events out; bytes out.

Rules of this module:

- No sockets, no processes, no clock. ``Reader`` parses what the peer sent into events;
  ``command`` and ``data`` build what we send. ``_pinentry`` moves the bytes.
- Received bytes live only in the buffer the caller hands to ``Reader`` (a ``SecretBuffer``
  when a passphrase may pass): the caller receives straight into ``Reader.free()``, a ``D``
  line's payload is a view into that buffer, and ``unescape_into`` decodes it into another
  buffer the caller owns. Bytes moved or consumed are zeroed where they were.
- A line is at most ``LINE_MAX`` bytes, its LF included (the Assuan manual's limit both
  ways); a longer line is a protocol error, never a reason to grow a buffer. Lines end in LF
  or CR LF; empty lines count as comments.
- Percent escaping: ``%``, CR and LF always, and a backslash at the end of a line (Assuan
  reserves it for continuation lines); upper-case hex out, either case in.

Errors are ``PinentryError`` (garbage on the wire, an overlong line, a malformed escape,
decoded data over the room given).

Example::

    >>> reader = Reader(memoryview(bytearray(LINE_MAX)), peer="pinentry-tty")
    >>> reader.feed(b"OK Pleased to meet you\\nD a%25b\\nERR 83886179 Operation cancelled\\n")
    64
    >>> reader.next_event()
    Ok(text=b'Pleased to meet you')
    >>> bytes(reader.next_event().raw)
    b'a%25b'
    >>> reader.next_event()
    Err(code=83886179, text='Operation cancelled')
    >>> reader.next_event() is NEED_DATA
    True
    >>> command(b"SETDESC", "50%\\nsure?")
    b'SETDESC 50%25%0Asure?\\n'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nomyo_agent.errors import PinentryError

__all__ = [
    "LINE_MAX",
    "NEED_DATA",
    "Comment",
    "Data",
    "Err",
    "Event",
    "Inquire",
    "NeedData",
    "Ok",
    "Reader",
    "Status",
    "command",
    "data",
    "escape",
    "unescape",
    "unescape_into",
]

LINE_MAX: Final = 1000  # bytes per line, the LF included
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_D_ESCAPES = {0x25: b"%25", 0x0D: b"%0D", 0x0A: b"%0A", 0x5C: b"%5C"}


@dataclass(frozen=True, slots=True)
class Ok:
    """``OK [text]``: the request succeeded (the greeting is one too)."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Err:
    """``ERR code [text]``: the request failed; ``code`` is a libgpg-error value."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Status:
    """``S keyword [text]``: information while the request runs (e.g. ``PIN_REPEATED``)."""

    keyword: bytes
    text: bytes


@dataclass(frozen=True, slots=True)
class Inquire:
    """``INQUIRE keyword [params]``: the peer asks us for data (answered with ``data``)."""

    keyword: bytes
    params: bytes


@dataclass(frozen=True, slots=True)
class Comment:
    """``# text`` or an empty line: for debugging only."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Data:
    """``D payload``: ``raw`` is still escaped and is a view into the reader's buffer, valid only
    until the reader's next call (decode it with ``unescape_into`` before asking again)."""

    raw: memoryview


class NeedData:
    """More bytes are needed before the next event (``NEED_DATA`` is its only instance)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

Event = Ok | Err | Status | Inquire | Comment | Data


class Reader:
    """The receiving half: lines from ``buffer`` (at least ``LINE_MAX`` bytes, owned by the
    caller), one event per ``next_event`` call."""

    def __init__(self, buffer: memoryview, *, peer: str = "the peer") -> None:
        if len(buffer) < LINE_MAX:
            raise ValueError(f"an assuan reader needs a buffer of {LINE_MAX} bytes")
        self._buf = buffer
        self._peer = peer
        self._start = 0  # first unread byte
        self._end = 0  # one past the last received byte

    def free(self) -> memoryview:
        """Where to receive the next bytes; report how many with ``filled``. Unread bytes are
        moved to the front first, and the place they left is zeroed."""
        if self._start:
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start : self._end]
            self._buf[n : self._end] = bytes(self._end - n)
            self._start, self._end = 0, n
        return self._buf[self._end :]

    def filled(self, n: int) -> None:
        """``n`` bytes were written at the front of what ``free`` returned."""
        if not 0 <= n <= len(self._buf) - self._end:
            raise ValueError("filled more than was free")
        self._end += n

    def feed(self, received: bytes) -> int:
        """Copy as much of ``received`` as fits; return how much did. Feed the rest after
        reading the events (a full buffer with no complete line is an error then)."""
        room = self.free()
        n = min(len(room), len(received))
        room[:n] = received[:n]
        self.filled(n)
        return n

    def next_event(self) -> Event | NeedData:
        """The next complete line as an event, or ``NEED_DATA``."""
        end = _find_lf(self._buf, self._start, self._end)
        if end < 0:
            if self._end - self._start >= LINE_MAX:
                raise PinentryError(f"{self._peer} sent a line over {LINE_MAX} bytes")
            return NEED_DATA
        if end + 1 - self._start > LINE_MAX:
            raise PinentryError(f"{self._peer} sent a line over {LINE_MAX} bytes")
        stop = end - 1 if end > self._start and self._buf[end - 1] == 0x0D else end
        line = self._buf[self._start : stop]
        self._start = end + 1
        return self._event(line)

    def _event(self, line: memoryview) -> Event:
        # A D line stays in the buffer (it may carry a passphrase); any other line is no secret.
        head = bytes(line[:2])
        if head == b"D ":
            return Data(line[2:])
        if not head or head[:1] == b"#":
            return Comment(bytes(line[1:]))
        word, _, rest = bytes(line).partition(b" ") if head[:1] != b"D" else (b"D", b"", b"")
        if word == b"OK":
            return Ok(rest)
        if word == b"ERR":
            code, _, text = rest.partition(b" ")
            return Err(int(code) if code.isdigit() else 0, text.decode("utf-8", "replace"))
        if word == b"S" and rest:
            keyword, _, text = rest.partition(b" ")
            return Status(keyword, text)
        if word == b"INQUIRE" and rest:
            keyword, _, params = rest.partition(b" ")
            return Inquire(keyword, params)
        raise PinentryError(f"{self._peer} does not speak the pinentry protocol")


def _find_lf(buf: memoryview, start: int, end: int) -> int:
    # A loop over the view, not bytes(...).find: that would copy a D line (a passphrase) out.
    for i in range(start, end):
        if buf[i] == 0x0A:
            return i
    return -1


def escape(raw: bytes) -> bytes:
    """``%``, CR and LF as ``%25``, ``%0D``, ``%0A``; a final backslash as ``%5C``."""
    out = raw.replace(b"%", b"%25").replace(b"\r", b"%0D").replace(b"\n", b"%0A")
    return out[:-1] + b"%5C" if out.endswith(b"\\") else out


def unescape_into(raw: memoryview | bytes, out: memoryview, size: int, what: str = "data") -> int:
    """Decode ``raw`` into ``out`` from offset ``size``; return the new size. Nothing decoded
    ever exists outside ``out``."""
    i, n = 0, len(raw)
    while i < n:
        if size >= len(out):
            raise PinentryError(f"the {what} is longer than {len(out)} bytes")
        c = raw[i]
        if c == 0x25:  # "%XX"
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise PinentryError("pinentry sent a malformed escape")
            c = _HEX[raw[i + 1]] * 16 + _HEX[raw[i + 2]]
            i += 2
        out[size] = c
        size += 1
        i += 1
    return size


def unescape(raw: bytes) -> bytes:
    """``unescape_into`` for what is not secret (status texts, tests)."""
    out = bytearray(len(raw))
    return bytes(out[: unescape_into(raw, memoryview(out), 0)])


def command(name: bytes, text: str | None = None) -> bytes:
    """One request line, ``text`` escaped and clipped by whole characters to fit the line."""
    if text is None:
        return name + b"\n"
    room = LINE_MAX - len(name) - 2  # the space and the LF
    while True:
        arg = escape(text.encode("utf-8"))
        if len(arg) <= room:
            return name + b" " + arg + b"\n"
        text = text[: len(text) - max(1, (len(arg) - room) // 4)]


def data(payload: bytes) -> bytes:
    """``payload`` as ``D`` lines of at most ``LINE_MAX`` bytes, then ``END`` (an INQUIRE's
    answer). Every backslash is escaped, so no line can end in one; no escape is cut in two."""
    room = LINE_MAX - 3  # "D ", the LF
    lines, line = [], bytearray()
    for byte in payload:
        piece = _D_ESCAPES.get(byte) or bytes((byte,))
        if len(line) + len(piece) > room:
            lines.append(b"D " + bytes(line) + b"\n")
            line.clear()
        line += piece
    if line:
        lines.append(b"D " + bytes(line) + b"\n")
    return b"".join(lines) + b"END\n"
