"""A real terminal for one test: a tmux session whose pane runs a command, as a person's shell
would, so that the command has a controlling terminal and a pinentry can draw on it. Keys are
typed with ``tmux send-keys``; the screen is read with ``capture-pane``.

``terminal(command)`` starts ``command`` in the ``desktop`` session's environment; the pane
prints ``EXIT=<code>`` when it ends and stays open for the test to read.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.desktop import Session, require_programs
from support.waiting import wait_until


class Terminal:
    def __init__(self, sock: str, name: str = "cli") -> None:
        self.sock = sock
        self.name = name

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.sock, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> None:
        wait_until(f"{text!r} on the terminal", lambda: self.screen().count(text) >= count, timeout)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.tmux("send-keys", "-t", self.name, "Enter")


@pytest.fixture
def terminal(desktop: Session, tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    require_programs("tmux", "pinentry-tty")
    sock = str(tmp_path / "tmux.sock")

    def run(command: str, name: str = "cli") -> Terminal:
        env = [f"{k}={shlex.quote(v)}" for k, v in desktop.env.items()]
        shell = f"env -i {' '.join(env)} TERM=xterm-256color {command}; echo EXIT=$?; sleep 600"
        subprocess.run(
            ["tmux", "-S", sock, "new-session", "-d", "-s", name, "-x", "120", "-y", "30", shell],
            check=True, timeout=10, env=desktop.env,
        )  # fmt: skip
        return Terminal(sock, name)

    yield run
    subprocess.run(["tmux", "-S", sock, "kill-server"], check=False, timeout=10)
