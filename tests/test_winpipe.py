r"""The Windows named pipe, tested where Windows is not: its name and its security descriptor.

Named pipes, their DACLs and the IOCP proactor exist only on Windows, which these machines do not
run. What is tested here: the pipe name (one per user, one-to-one escaping), the open and pipe
modes (first instance, remote clients rejected), the binary SID against vectors worked out by
hand from MS-DTYP 2.4.2, the SDDL string that Windows' own parser turns into the pipe's security
descriptor (exactly, and read back by an independent reader for its meaning), and the
Windows-only code against the win32 type stubs (``mypy --platform win32``, run by ``./dev lint``).
"""

from __future__ import annotations

import asyncio
import getpass
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomyo_agent import _winpipe
from nomyo_agent import _winpipe_spec as w

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


def test_the_pipes_sddl_is_exactly_this() -> None:
    # O: owner, D:P a protected DACL, deny FILE_ALL_ACCESS to network logons, allow it to the user.
    assert w.pipe_sddl("S-1-5-21-1-2-3-1001") == (
        "O:S-1-5-21-1-2-3-1001D:P(D;;FA;;;NU)(A;;FA;;;S-1-5-21-1-2-3-1001)"
    )


_ACE = re.compile(r"\((?P<type>[^;()]*);(?P<flags>[^;()]*);(?P<rights>[^;()]*);"
                  r"(?P<guid>[^;()]*);(?P<inherit>[^;()]*);(?P<sid>[^;()]*)\)")  # fmt: skip


def _read_sddl(sddl: str) -> dict[str, object]:
    """An independent reader of the SDDL subset a pipe needs: owner, group, DACL flags and ACEs
    (MS-DTYP 2.5.1), strict enough that anything else in the string fails the match."""
    m = re.fullmatch(r"O:(?P<owner>S-1(?:-\d+)+|[A-Z]{2})(?:G:(?P<group>S-1(?:-\d+)+|[A-Z]{2}))?"
                     r"D:(?P<flags>[PAIR]*)"
                     r"(?P<aces>(?:\([^()]*\))*)(?P<rest>.*)", sddl)  # fmt: skip
    assert m is not None, sddl
    aces = [a.groupdict() for a in _ACE.finditer(m["aces"])]
    assert "".join(a.group(0) for a in _ACE.finditer(m["aces"])) == m["aces"]
    return {"owner": m["owner"], "group": m["group"], "flags": m["flags"], "rest": m["rest"],
            "aces": [(a["type"], a["flags"], a["rights"], a["guid"], a["inherit"], a["sid"])
                     for a in aces]}  # fmt: skip


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
def test_the_pipes_sddl_admits_only_the_user(subs: list[int]) -> None:
    user = "-".join(["S-1-5-21", *map(str, subs)])
    sd = _read_sddl(w.pipe_sddl(user))
    assert sd["owner"] == user
    assert sd["group"] is None  # no group: it would be one more principal to reason about
    assert sd["rest"] == ""  # no SACL, nothing after the DACL
    assert sd["flags"] == "P"  # protected: nothing is inherited from the pipe namespace
    # Deny before allow (ACEs are evaluated in order); full access for the user and no one else.
    assert sd["aces"] == [("D", "", "FA", "", "", "NU"), ("A", "", "FA", "", "", user)]
    allowed = {ace[5] for ace in sd["aces"] if ace[0] == "A"}  # type: ignore[index]
    assert allowed == {user}
    for other in ("WD", "AN", "NU", "S-1-1-0", "S-1-5-7", "S-1-5-2", "BU", "AU", "IU"):
        assert other not in allowed  # Everyone, Anonymous, network, users, interactive


@pytest.mark.parametrize(
    "bad", ["WD", "S-1-5-21-1)(A;;FA;;;WD", "S-1-5-21-1D:(A;;FA;;;WD)", "", "S-1-5-21-x"]
)
def test_the_pipes_sddl_takes_nothing_but_a_strict_sid(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SID"):
        w.pipe_sddl(bad)


def test_off_windows_the_pipe_functions_say_so() -> None:
    with pytest.raises(OSError, match="only on Windows"):
        _winpipe.connect_pipe(w.default_pipe_name("x"), 1.0)
    with pytest.raises(OSError, match="only on Windows"):
        asyncio.run(_winpipe.open_pipe_connection(w.default_pipe_name("x")))  # type: ignore[arg-type]
