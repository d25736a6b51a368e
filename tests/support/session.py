"""The desktop session's D-Bus services for one test (TESTING.md, "D-Bus services a desktop
session has"): a private dbus-daemon standing in for the system bus beside the ``desktop``
fixture's session bus, and ``session_standin.py`` owning ``org.freedesktop.login1`` and the
screensaver names on them.

``login_session`` adds ``DBUS_SYSTEM_BUS_ADDRESS`` to ``desktop.env``, so an agent started
after it (``make_agent``) watches these buses. ``LoginSession.send`` makes the stand-in emit a
signal; ``LoginSession.expect`` waits for one of its reports (an inhibitor taken or released).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nomyo_devserver.session import start_bus
from support.desktop import Session, require_programs, stop_group

STANDIN = Path(__file__).with_name("session_standin.py")


@dataclass
class LoginSession:
    proc: subprocess.Popen[bytes]
    system_bus: str
    seen: list[str] = field(default_factory=list)
    _buf: bytes = b""

    def send(self, command: str) -> None:
        """Have the stand-in emit a signal; returns once it went out on the bus."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        self.expect(f"sent {command}")

    def expect(self, line: str, timeout: float = 10.0) -> float:
        """Wait for the stand-in to report ``line``; returns the monotonic time it was read."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while line not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"the stand-in never reported {line!r}; it reported {self.seen}")
            chunk = os.read(fd, 4096)
            if not chunk:
                pytest.fail(f"the stand-in exited; it reported {self.seen}")
            self._buf += chunk
            *lines, rest = self._buf.split(b"\n")
            self._buf = rest
            self.seen.extend(x.decode() for x in lines)
        self.seen.remove(line)
        return time.monotonic()

    def reported(self, line: str) -> bool:
        """Whether ``line`` was reported so far (without waiting)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self._buf += chunk
            *lines, rest = self._buf.split(b"\n")
            self._buf = rest
            self.seen.extend(x.decode() for x in lines)
        return line in self.seen


@pytest.fixture
def login_session(desktop: Session) -> Iterator[LoginSession]:
    """logind and the screensaver, stood in for on a private system bus and the session bus."""
    require_programs("dbus-daemon")
    system, address = start_bus(desktop.env)
    desktop.env["DBUS_SYSTEM_BUS_ADDRESS"] = address
    proc = subprocess.Popen(
        [sys.executable, str(STANDIN)],
        env=desktop.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    standin = LoginSession(proc=proc, system_bus=address)
    try:
        standin.expect("ready")
        yield standin
    finally:
        stop_group(proc)
        stop_group(system)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
