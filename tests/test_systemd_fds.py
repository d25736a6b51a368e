"""What a process takes from the service manager's fd handoff (``LISTEN_FDS``/``LISTEN_FDNAMES``).

Each case runs in a child process with a real fd table: fd 3 is what the handoff says was
passed, fd 4 is something else the process happens to have open (a socket of its own, as a
library or a parent could leave). Only the fds ``LISTEN_FDS`` counts are the handoff's; a name
list longer than that, or a passed fd that is not a listening stream socket, must not make the
agent serve on an fd nobody meant it to.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short folder: ``sun_path`` holds 108 bytes, pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="fds-") as name:
        yield Path(name)


# The child: fds 3 and 4 are in place, LISTEN_PID is set to its own pid, then it asks.
_CHILD = textwrap.dedent(
    """
    import os, sys
    from nomyo_agent import _systemd
    from nomyo_agent.errors import AgentError

    def is_open(fd):
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    env = dict(os.environ, LISTEN_PID=str(os.getpid()))
    try:
        sock = _systemd.inherited_socket(env, name=sys.argv[1])
    except AgentError as exc:
        print("refused", type(exc).__name__, exc, "|", exc.hint)
    else:
        print("none" if sock is None else f"fd {sock.fileno()} {sock.getsockname()}")
        print("fd4", "open" if is_open(4) else "closed")
    """
)


def _run(fd3: socket.socket, fd4: socket.socket, fds: str, names: str, name: str) -> str:
    """Run the child with ``fd3``/``fd4`` at fds 3/4 and the given handoff variables."""
    env = dict(os.environ, LISTEN_FDS=fds, LISTEN_FDNAMES=names)

    def place() -> None:  # in the child, between fork and exec: as the service manager does
        os.dup2(fd3.fileno(), 3)
        os.dup2(fd4.fileno(), 4)

    done = subprocess.run(
        [sys.executable, "-c", _CHILD, name], env=env, preexec_fn=place, close_fds=False,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_a_name_beyond_the_passed_fds_is_ignored(folder: Path) -> None:
    passed = _listener(folder / "passed.sock")
    other = _listener(folder / "other.sock")
    with passed, other:
        out = _run(passed, other, fds="1", names="proxy:agent", name="agent")
    # "agent" names fd 4, which systemd never passed: the handoff has one fd, so fd 3 it is,
    # and the process's own fd 4 is left alone.
    assert f"fd 3 {folder / 'passed.sock'}" in out
    assert "fd4 open" in out


def test_the_named_fd_among_those_passed_wins(folder: Path) -> None:
    first = _listener(folder / "first.sock")
    second = _listener(folder / "second.sock")
    with first, second:
        out = _run(first, second, fds="2", names="proxy:agent", name="agent")
    assert f"fd 4 {folder / 'second.sock'}" in out


@pytest.mark.parametrize(
    "kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["datagram", "stream-not-listening"]
)
def test_a_passed_fd_that_does_not_listen_is_refused(folder: Path, kind: int) -> None:
    passed = socket.socket(socket.AF_UNIX, kind)
    passed.bind(str(folder / "passed.sock"))
    other = _listener(folder / "other.sock")
    with passed, other:
        out = _run(passed, other, fds="1", names="agent", name="agent")
    assert out.startswith("refused StartFailedError"), out
    assert "listening stream socket" in out
    assert "ListenStream" in out  # the hint says what to fix in the unit
