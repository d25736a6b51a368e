"""The pinentry client against real pinentry programs: tty and curses in a tmux pane, gtk-2 on an
Xvfb display, plus a tiny Assuan probe script for what only the wire shows (escaping, the
child's environment, multi-line answers) and for the ways a pinentry can fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nomyo_agent._pinentry import default_program, get_passphrase, pinentry_env_from
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import PinentryCancelledError, PinentryError
from nomyo_agent.protocol import PinEntry
from support.desktop import require_programs
from support.waiting import wait_until
from support.x11 import XDisplay

FPR = "3f2a:91c0:0d4e:77b1"
UNICODE_PIN = "pä%sswört €"


@dataclass
class Pane:
    """A tmux pane whose terminal a pinentry draws on, driven with send-keys."""

    sock: str
    tty: str

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.sock, *args],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "pe")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "pe", "-l", text)
        self.tmux("send-keys", "-t", "pe", "Enter")

    def wait_for(self, text: str, after: int = 0) -> None:
        """Wait until ``text`` occurs more than ``after`` times on the screen."""
        wait_until(f"{text!r} in the tmux pane", lambda: self.capture().count(text) > after)

    @property
    def where(self) -> PinEntry:
        return PinEntry(env={"TERM": "xterm-256color", "LANG": "C.UTF-8"}, ttyname=self.tty)


@pytest.fixture
def pane() -> Iterator[Pane]:
    require_programs("tmux", "pinentry-tty", "pinentry-curses")
    folder = tempfile.mkdtemp(prefix="pe-")  # short: a Unix socket path has ~100 bytes
    sock = os.path.join(folder, "tmux")
    env = {**os.environ, "LANG": "C.UTF-8", "TERM": "xterm-256color"}
    subprocess.run(
        ["tmux", "-S", sock, "new-session", "-d", "-s", "pe", "-x", "100", "-y", "30",
         "sleep 600"],
        env=env, check=True, timeout=10,
    )  # fmt: skip
    try:
        tty = subprocess.run(
            ["tmux", "-S", sock, "display", "-p", "-t", "pe", "#{pane_tty}"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        yield Pane(sock=sock, tty=tty)
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], check=False, timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def background() -> Iterator[Any]:
    """Run a coroutine in its own thread and loop, so the test can type while it waits."""
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def start(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return pool.submit(asyncio.run, coro)

    yield start
    pool.shutdown(wait=True)


def take(secret: SecretBuffer) -> bytes:
    """The test's own copy of a returned passphrase (tests may hold secrets in bytes)."""
    assert isinstance(secret, SecretBuffer)
    try:
        return bytes(secret.view)
    finally:
        secret.close()


def ask(program: str, where: PinEntry, **kw: Any) -> Coroutine[Any, Any, SecretBuffer]:
    kw.setdefault("title", "nomyo-agent test")
    kw.setdefault("description", f"Unlock the nomyo identity {FPR}")
    kw.setdefault("timeout", 30.0)
    return get_passphrase(program, where, **kw)


# --- real terminal pinentries ------------------------------------------------------------------


def test_tty_unicode_passphrase_and_description_naming_the_fingerprint(
    pane: Pane, background: Any
) -> None:
    desc = f"Unlock the nomyo identity {FPR}\n100% yours\r"
    fut = background(ask("pinentry-tty", pane.where, description=desc))
    pane.wait_for("Passphrase:")
    screen = pane.capture().splitlines()
    assert f"Unlock the nomyo identity {FPR}" in screen  # LF became a line break
    assert "100% yours" in screen  # "%" arrived as itself
    pane.type(UNICODE_PIN)
    assert take(fut.result(timeout=20)) == UNICODE_PIN.encode()


def test_tty_new_passphrase_is_asked_twice(pane: Pane, background: Any) -> None:
    fut = background(ask("pinentry-tty", pane.where, confirm=True))
    pane.wait_for("Passphrase:")
    pane.type("first")
    pane.wait_for("Repeat:")
    pane.type("first")
    assert take(fut.result(timeout=20)) == b"first"


def test_curses_confirm_mismatch_asks_again(pane: Pane, background: Any) -> None:
    # pinentry-curses 1.2.1 ignores SETREPEAT: the client repeats and compares itself.
    fut = background(ask("pinentry-curses", pane.where, confirm=True))
    pane.wait_for("Passphrase:")
    pane.type("one")
    pane.wait_for("Repeat:")
    pane.type("two")
    pane.wait_for("the passphrases do not match")
    pane.type("three")
    pane.wait_for("Repeat:")
    pane.type("three")
    assert take(fut.result(timeout=20)) == b"three"


def test_tty_cancel(pane: Pane, background: Any) -> None:
    fut = background(ask("pinentry-tty", pane.where))
    pane.wait_for("Passphrase:")
    pane.tmux("send-keys", "-t", "pe", "C-d")
    with pytest.raises(PinentryCancelledError):
        fut.result(timeout=20)


def test_curses_cancel_button(pane: Pane, background: Any) -> None:
    fut = background(ask("pinentry-curses", pane.where))
    pane.wait_for("<Cancel>")
    for key in ("Tab", "Tab", "Enter"):  # entry -> OK -> Cancel, press
        pane.tmux("send-keys", "-t", "pe", key)
        time.sleep(0.1)
    with pytest.raises(PinentryCancelledError):
        fut.result(timeout=20)


def test_empty_passphrase_is_an_empty_buffer(pane: Pane, background: Any) -> None:
    fut = background(ask("pinentry-tty", pane.where))
    pane.wait_for("Passphrase:")
    pane.type("")
    assert take(fut.result(timeout=20)) == b""


def test_timeout_is_a_pinentry_error_and_leaves_no_process(pane: Pane) -> None:
    started = time.monotonic()
    with pytest.raises(PinentryError) as info:
        asyncio.run(ask("pinentry-tty", pane.where, timeout=1.0))
    assert time.monotonic() - started < 9
    assert "timed out" in str(info.value) or "within" in str(info.value)
    left = subprocess.run(
        ["ps", "-o", "comm=", "-t", pane.tty.removeprefix("/dev/")],
        capture_output=True, text=True, check=False, timeout=10,
    ).stdout  # fmt: skip
    assert "pinentry" not in left


# --- a real graphical pinentry -----------------------------------------------------------------


def test_gtk2_opens_on_the_askers_display_not_the_agents(
    xdisplay: XDisplay, background: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_programs("pinentry-gtk-2")
    monkeypatch.setenv("DISPLAY", ":4242")  # the "agent's" display: must not be used
    where = pinentry_env_from({**xdisplay.env, "NO_AT_BRIDGE": "1", "LANG": "C.UTF-8"}, "")
    fut = background(ask("/usr/bin/pinentry-gtk-2", where, title="nomyo-agent gtk test"))
    wait_until("the pinentry window", lambda: bool(xdisplay.windows_named("nomyo-agent gtk")))
    xdisplay.screenshot("pinentry-gtk2.png")
    xdisplay.xdotool("type", "--delay", "20", UNICODE_PIN)
    xdisplay.xdotool("key", "Return")
    assert take(fut.result(timeout=20)) == UNICODE_PIN.encode()


# --- what only the wire shows: a tiny Assuan probe ---------------------------------------------


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    """An executable that speaks just enough Assuan, records what it gets, and answers GETPIN
    with the lines in ``answer`` (or exits with ``exit`` if that file exists)."""
    script = tmp_path / "probe-pinentry"
    script.write_text(
        "#!/bin/sh\n"
        f"D='{tmp_path}'\n"
        'env > "$D/env"\n'
        '[ -f "$D/greeting" ] && cat "$D/greeting" || echo "OK hello"\n'
        "while IFS= read -r line; do\n"
        '  printf "%s\\n" "$line" >> "$D/lines"\n'
        '  case "$line" in\n'
        '    GETPIN) [ -f "$D/exit" ] && exit "$(cat "$D/exit")"; cat "$D/answer";;\n'
        "    *) echo OK;;\n"
        "  esac\n"
        "done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "answer").write_text("OK\n")
    return script


def test_wire_escapes_and_options(probe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMYO_TEST_AGENT_ONLY", "must-not-leak")
    monkeypatch.setenv("DISPLAY", ":4242")
    where = PinEntry(
        env={"DISPLAY": ":7", "TERM": "screen", "LC_ALL": "de_DE.UTF-8", "SSH_AUTH_SOCK": "/x"},
        ttyname="/dev/pts/77",
    )
    take(asyncio.run(ask(str(probe), where, description="a%b\r\nc", error="wrong, 50%")))
    lines = (probe.parent / "lines").read_text().splitlines()
    assert "SETDESC a%25b%0D%0Ac" in lines
    assert "SETERROR wrong, 50%25" in lines
    assert "SETTITLE nomyo-agent test" in lines
    assert "OPTION ttyname=/dev/pts/77" in lines
    assert "OPTION ttytype=screen" in lines
    assert "OPTION lc-ctype=de_DE.UTF-8" in lines
    assert "OPTION display=:7" in lines
    assert lines[-1] == "GETPIN"
    env = dict(
        line.split("=", 1)
        for line in (probe.parent / "env").read_text().splitlines()
        if "=" in line
    )
    assert env["DISPLAY"] == ":7"
    assert "NOMYO_TEST_AGENT_ONLY" not in env
    assert "SSH_AUTH_SOCK" not in env
    assert env["PATH"] == os.environ["PATH"]


def test_confirm_sends_setrepeat(probe: Path) -> None:
    (probe.parent / "answer").write_text("S PIN_REPEATED\nD same\nOK\n")
    assert take(asyncio.run(ask(str(probe), PinEntry(), confirm=True))) == b"same"
    lines = (probe.parent / "lines").read_text().splitlines()
    assert "SETREPEAT Repeat:" in lines
    assert lines.count("GETPIN") == 1


def test_multi_line_answer_and_escapes_decode_exactly(probe: Path) -> None:
    (probe.parent / "answer").write_text("# comment\nD a%25b\nD %0Ac%00%e2%82%ac\nOK\n")
    assert take(asyncio.run(ask(str(probe), PinEntry()))) == b"a%b\nc\x00\xe2\x82\xac"


def test_overlong_passphrase_is_refused(probe: Path) -> None:
    (probe.parent / "answer").write_text(("D " + "x" * 900 + "\n") * 5 + "OK\n")
    with pytest.raises(PinentryError, match="longer than 4096"):
        asyncio.run(ask(str(probe), PinEntry()))


def test_malformed_escape_is_refused(probe: Path) -> None:
    (probe.parent / "answer").write_text("D ab%zz\nOK\n")
    with pytest.raises(PinentryError, match="malformed"):
        asyncio.run(ask(str(probe), PinEntry()))


def test_crash_before_answering(probe: Path) -> None:
    (probe.parent / "exit").write_text("3")
    with pytest.raises(PinentryError, match=r"exited \(3\) before answering"):
        asyncio.run(ask(str(probe), PinEntry()))


def test_not_a_pinentry(probe: Path) -> None:
    (probe.parent / "greeting").write_text("hello, I am cat\n")
    with pytest.raises(PinentryError, match="does not speak the pinentry protocol"):
        asyncio.run(ask(str(probe), PinEntry()))


def test_an_inquire_is_refused_not_answered(probe: Path) -> None:
    # A pinentry never asks its client for data; one that does is not to be trusted with a pin.
    (probe.parent / "answer").write_text("INQUIRE SOME_DATA please\nOK\n")
    with pytest.raises(PinentryError, match="probe-pinentry asked for SOME_DATA"):
        asyncio.run(ask(str(probe), PinEntry()))


def test_missing_program_says_what_to_install() -> None:
    with pytest.raises(PinentryError) as info:
        asyncio.run(ask("/nonexistent/pinentry-nothing", PinEntry()))
    assert "cannot run the pinentry program /nonexistent/pinentry-nothing" in str(info.value)
    assert "install pinentry" in info.value.hint


def test_no_display_and_no_tty_is_a_pinentry_error() -> None:
    require_programs("pinentry-gtk-2")
    with pytest.raises(PinentryError):
        asyncio.run(ask("/usr/bin/pinentry-gtk-2", PinEntry(env={"LANG": "C.UTF-8"})))


# --- the client side and the default ---------------------------------------------------------


def test_env_from_keeps_only_what_a_pinentry_needs() -> None:
    environ = {
        "DISPLAY": ":1", "WAYLAND_DISPLAY": "wayland-0", "DBUS_SESSION_BUS_ADDRESS": "unix:x",
        "XAUTHORITY": "/a", "TERM": "xterm", "LANG": "C.UTF-8", "LC_MESSAGES": "de_DE",
        "GPG_TTY": "/dev/pts/3", "SSH_AUTH_SOCK": "/s", "NOMYO_AGENT_SOCK": "/n", "HOME": "/h",
    }  # fmt: skip
    where = pinentry_env_from(environ, "/dev/pts/5")
    assert where.ttyname == "/dev/pts/5"
    assert set(where.env) == {
        "DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XAUTHORITY", "TERM", "LANG",
        "LC_MESSAGES", "GPG_TTY",
    }  # fmt: skip
    if not os.isatty(0):  # under pytest stdin is usually not a terminal: GPG_TTY is the fallback
        assert pinentry_env_from(environ, None).ttyname == "/dev/pts/3"


def test_default_program_is_found_on_path() -> None:
    program = default_program()
    assert os.path.isabs(program)
    assert os.path.basename(program) == "pinentry"  # Debian's alternative comes first


def test_a_terminal_flavour_gives_way_to_a_graphical_one_for_a_display_only_asker() -> None:
    from nomyo_agent._pinentry import pinentry_on_display, program_for

    tty = "/usr/bin/pinentry-tty"
    display_only = PinEntry(env={"DISPLAY": ":5"})
    assert program_for(tty, display_only) == "/usr/bin/pinentry-gtk-2"
    assert program_for("/usr/bin/pinentry-curses", display_only) == "/usr/bin/pinentry-gtk-2"
    assert program_for(tty, PinEntry(env={"DISPLAY": ":5"}, ttyname="/dev/pts/1")) == tty
    assert program_for(tty, PinEntry(env={})) == tty  # nothing better: its error says why
    assert program_for("/usr/bin/pinentry-qt", display_only) == "/usr/bin/pinentry-qt"
    where = pinentry_on_display({"DISPLAY": ":5", "GPG_TTY": "/dev/pts/9", "TERM": "xterm"})
    assert where.ttyname is None
    assert "GPG_TTY" not in where.env
    assert where.env["DISPLAY"] == ":5"


def test_a_hostile_environment_from_the_wire_is_a_pinentry_error_not_a_crash() -> None:
    """``PinEntry`` comes from a client (``Hello``, ``Unlock``): a NUL in a value, which no
    process environment can hold, must fail as a pinentry error, like any unusable place."""
    require_programs("pinentry-tty")
    where = PinEntry(env={"DISPLAY": ":0\x00evil", "TERM": "xterm"}, ttyname="/dev/null")
    with pytest.raises(PinentryError, match="cannot run the pinentry program"):
        asyncio.run(ask("/usr/bin/pinentry-tty", where))
