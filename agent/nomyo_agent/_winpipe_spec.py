r"""The Windows named pipe as data: its name, its modes, SIDs and its security descriptor in SDDL.

Pure functions with no Windows call, so that every platform tests them; ``_winpipe`` makes the
pipe from them. Rules:

- One pipe per user, ``\\.\pipe\nomyo-agent-<user>``, the user name escaped one-to-one.
- Every instance: byte mode, remote clients rejected; the first one created with
  ``FILE_FLAG_FIRST_PIPE_INSTANCE``.
- The security descriptor (``pipe_sddl``): the user as owner, a protected DACL that denies
  network logons and allows the user and nobody else. Windows' own parser turns it into the
  binary descriptor; nothing here packs ACL bytes by hand.
"""

from __future__ import annotations

import getpass
import re
import struct

__all__ = [
    "default_pipe_name",
    "open_mode",
    "pipe_mode",
    "pipe_sddl",
    "sid_from_string",
    "sid_to_string",
]

# Windows constants (winbase.h / winnt.h); spelled out so that the pure parts need no Windows.
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_BYTE = 0x00000000
PIPE_READMODE_BYTE = 0x00000000
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
BUFFER_SIZE = 65536
MAX_PIPE_NAME = 256

_SID = re.compile(r"S-1-(\d+)((?:-\d+){0,15})")
_NAME_SAFE = re.compile(r"[A-Za-z0-9._-]")


def default_pipe_name(user: str | None = None) -> str:
    r"""``\\.\pipe\nomyo-agent-<user>``; characters a pipe name cannot hold are %-escaped.

    The escaping is one-to-one, so two user names never share a pipe.
    """
    user = getpass.getuser() if user is None else user
    safe = "".join(
        c if _NAME_SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in user
    )
    name = rf"\\.\pipe\nomyo-agent-{safe}"
    if len(name) > MAX_PIPE_NAME:
        raise ValueError(f"the pipe name for user {user!r} is longer than Windows allows")
    return name


def open_mode(first: bool) -> int:
    """``dwOpenMode`` for CreateNamedPipeW: duplex, overlapped, first instance when ``first``."""
    mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
    return mode | FILE_FLAG_FIRST_PIPE_INSTANCE if first else mode


def pipe_mode() -> int:
    """``dwPipeMode``: a byte stream (our frames carry their own length), local clients only."""
    return PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS


def sid_from_string(text: str) -> bytes:
    """The binary SID (MS-DTYP 2.4.2) for ``S-1-<authority>-<sub>...``."""
    match = _SID.fullmatch(text)
    if not match:
        raise ValueError(f"not a SID: {text!r}")
    authority = int(match.group(1))
    subs = [int(s) for s in match.group(2).split("-")[1:]]
    if authority >= 1 << 48 or any(s >= 1 << 32 for s in subs):
        raise ValueError(f"not a SID: {text!r}")
    return (
        struct.pack("<BB", 1, len(subs))
        + authority.to_bytes(6, "big")  # the only big-endian field in a SID
        + struct.pack(f"<{len(subs)}I", *subs)
    )


def sid_to_string(sid: bytes) -> str:
    """The ``S-1-...`` form of a binary SID; strict about its length."""
    if len(sid) < 8 or sid[0] != 1 or len(sid) != 8 + 4 * sid[1]:
        raise ValueError("not a binary SID")
    subs = struct.unpack(f"<{sid[1]}I", sid[8:])
    return "-".join(["S-1", str(int.from_bytes(sid[2:8], "big")), *map(str, subs)])


def pipe_sddl(user_sid: str) -> str:
    """The pipe's security descriptor in SDDL: owner ``user_sid``, a protected DACL (``P``:
    nothing inherited) that denies network logons (``NU``) and allows ``user_sid`` full access
    (``FA``), and nothing else: no Everyone (``WD``), no Anonymous (``AN``).

    Deny comes first, as Windows evaluates ACEs in order. ``user_sid`` must be a strict
    ``S-1-...`` string, so nothing can be smuggled into the descriptor.
    """
    sid_from_string(user_sid)  # validates
    return f"O:{user_sid}D:P(D;;FA;;;NU)(A;;FA;;;{user_sid})"
