r"""The Windows named pipe, tested where Windows is not: its name and its security descriptor.

Named pipes, their DACLs and the IOCP proactor exist only on Windows, which these machines do not
run. What is tested here: the pipe name (one per user, one-to-one escaping), the open and pipe
modes (first instance, remote clients rejected), the binary SID and the self-relative security
descriptor against vectors worked out by hand from MS-DTYP 2.4.2/2.4.4/2.4.5/2.4.6, and the
Windows-only code against the win32 type stubs (``mypy --platform win32``, run by ``./dev lint``).
"""

from __future__ import annotations

import asyncio
import getpass
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomyo_agent import _winpipe as w

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("user", "suffix"),
    [
        ("alice", "alice"),
        ("Bob.Smith-2_x", "Bob.Smith-2_x"),
        ("a b", "a%20b"),
        ("CORP\\bob", "CORP%5Cbob"),
        ("José", "Jos%C3%A9"),
        ("50%", "50%25"),  # '%' itself is escaped, so escaping stays one-to-one
    ],
)
def test_pipe_name(user: str, suffix: str) -> None:
    assert w.default_pipe_name(user) == "\\\\.\\pipe\\nomyo-agent-" + suffix


def test_pipe_name_defaults_to_the_login_name() -> None:
    assert w.default_pipe_name() == w.default_pipe_name(getpass.getuser())


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_pipe_names_never_collide(a: str, b: str) -> None:
    if a != b:
        assert w.default_pipe_name(a) != w.default_pipe_name(b)
    assert "\\" not in w.default_pipe_name(a).removeprefix("\\\\.\\pipe\\")


def test_pipe_name_too_long() -> None:
    with pytest.raises(ValueError, match="longer than Windows allows"):
        w.default_pipe_name("x" * 250)


def test_modes() -> None:
    # Values from winbase.h, restated here so that a typo in the module is caught.
    first, later = w.open_mode(first=True), w.open_mode(first=False)
    assert first == 0x3 | 0x40000000 | 0x00080000  # duplex, overlapped, FIRST_PIPE_INSTANCE
    assert later == 0x3 | 0x40000000
    assert w.pipe_mode() & 0x8  # PIPE_REJECT_REMOTE_CLIENTS
    assert w.pipe_mode() & 0x6 == 0  # byte type and byte read mode, not message mode


def test_sid_known_answers() -> None:
    assert w.sid_from_string("S-1-5-32-544") == bytes.fromhex("01020000000000052000000020020000")
    assert w.sid_from_string("S-1-5-2") == bytes.fromhex("010100000000000502000000")
    assert w.sid_from_string("S-1-1-0") == bytes.fromhex("010100000000000100000000")
    assert w.sid_to_string(bytes.fromhex("01020000000000052000000020020000")) == "S-1-5-32-544"


@given(
    st.integers(0, 2**48 - 1),
    st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=15),
)
def test_sid_round_trip(authority: int, subs: list[int]) -> None:
    text = "-".join(["S-1", str(authority), *map(str, subs)])
    assert w.sid_to_string(w.sid_from_string(text)) == text


@pytest.mark.parametrize(
    "bad", ["S-2-5-32", "S-1", "S-1-5-", "s-1-5-18", "S-1-5-4294967296", "S-1-5-x", " S-1-5-18"]
)
def test_sid_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SID"):
        w.sid_from_string(bad)


def test_binary_sid_rejects_a_wrong_length() -> None:
    with pytest.raises(ValueError, match="not a binary SID"):
        w.sid_to_string(bytes.fromhex("0102000000000005200000"))


def test_security_descriptor_known_answer() -> None:
    # For user S-1-5-18, written out field by field from MS-DTYP (little-endian unless noted).
    expected = bytes.fromhex(
        "01 00 04 90"  # revision 1, sbz1, control = SELF_RELATIVE|DACL_PROTECTED|DACL_PRESENT
        "14 00 00 00"  # owner at 20
        "00 00 00 00 00 00 00 00"  # no group, no SACL
        "20 00 00 00"  # DACL at 32
        "01 01 000000000005 12 00 00 00"  # owner: S-1-5-18
        "02 00 30 00 02 00 00 00"  # ACL revision 2, size 48, 2 ACEs
        "01 00 14 00 ff 01 1f 00 01 01 000000000005 02 00 00 00"  # deny FILE_ALL_ACCESS to NU
        "00 00 14 00 ff 01 1f 00 01 01 000000000005 12 00 00 00"  # allow FILE_ALL_ACCESS to user
    )
    assert w.build_security_descriptor(w.sid_from_string("S-1-5-18")) == expected


def _parse_descriptor(sd: bytes) -> dict[str, object]:
    """An independent reader of a self-relative security descriptor (owner and DACL only)."""
    rev, _sbz, control, owner_at, group_at, sacl_at, dacl_at = struct.unpack_from("<BBHIIII", sd)
    owner_len = 8 + 4 * sd[owner_at + 1]
    acl_rev, _, acl_size, count, _ = struct.unpack_from("<BBHHH", sd, dacl_at)
    aces, at = [], dacl_at + 8
    for _ in range(count):
        kind, flags, size, mask = struct.unpack_from("<BBHI", sd, at)
        assert size % 4 == 0
        aces.append((kind, flags, mask, w.sid_to_string(sd[at + 8 : at + size])))
        at += size
    assert at == dacl_at + acl_size == len(sd)
    return {
        "rev": rev, "control": control, "group": group_at, "sacl": sacl_at, "acl_rev": acl_rev,
        "owner": w.sid_to_string(sd[owner_at : owner_at + owner_len]), "aces": aces,
    }  # fmt: skip


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
def test_security_descriptor_admits_only_the_user(subs: list[int]) -> None:
    user = "-".join(["S-1-5-21", *map(str, subs)])
    parsed = _parse_descriptor(w.build_security_descriptor(w.sid_from_string(user)))
    assert parsed["rev"] == 1
    assert parsed["acl_rev"] == 2
    assert parsed["control"] == 0x8000 | 0x1000 | 0x0004  # protected: nothing is inherited
    assert parsed["group"] == parsed["sacl"] == 0
    assert parsed["owner"] == user
    # Deny before allow (ACEs are evaluated in order); nothing for Everyone or anyone else.
    assert parsed["aces"] == [(1, 0, w.FILE_ALL_ACCESS, "S-1-5-2"), (0, 0, w.FILE_ALL_ACCESS, user)]


def test_security_descriptor_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a binary SID"):
        w.build_security_descriptor(b"\x01\x05abc")


def test_off_windows_the_pipe_functions_say_so() -> None:
    with pytest.raises(OSError, match="only on Windows"):
        w.connect_pipe(w.default_pipe_name("x"), 1.0)
    with pytest.raises(OSError, match="only on Windows"):
        asyncio.run(w.open_pipe_connection(w.default_pipe_name("x")))  # type: ignore[arg-type]
