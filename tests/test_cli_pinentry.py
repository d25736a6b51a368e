"""``nomyo-agent unlock`` typed in a real terminal: the agent runs a real pinentry on the asking
terminal (not its own), retries after a wrong passphrase, and a cancel is exit code 4.

The CLI runs inside a tmux pane, so it has a controlling terminal like a person's shell; keys are
typed with ``tmux send-keys``.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nomyo_agent import protocol as p
from support.agent import RunningAgent
from support.desktop import Session, require_programs
from support.waiting import wait_until

PASSPHRASE = "correct horse"


class Terminal:
    def __init__(self, sock: str) -> None:
        self.sock = sock

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.sock, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "cli")

    def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> None:
        wait_until(f"{text!r} on the terminal", lambda: self.screen().count(text) >= count, timeout)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "cli", "-l", text)
        self.tmux("send-keys", "-t", "cli", "Enter")


@pytest.fixture
def terminal(desktop: Session, tmp_path: Path) -> Iterator[Callable[[str], Terminal]]:
    require_programs("tmux", "pinentry-tty")
    sock = str(tmp_path / "tmux.sock")

    def run(command: str) -> Terminal:
        env = [f"{k}={shlex.quote(v)}" for k, v in desktop.env.items()]
        shell = f"env -i {' '.join(env)} TERM=xterm-256color {command}; echo EXIT=$?; sleep 600"
        subprocess.run(
            ["tmux", "-S", sock, "new-session", "-d", "-s", "cli", "-x", "120", "-y", "30", shell],
            check=True, timeout=10, env=desktop.env,
        )  # fmt: skip
        return Terminal(sock)

    yield run
    subprocess.run(["tmux", "-S", sock, "kill-server"], check=False, timeout=10)


@pytest.fixture
def locked_agent(make_agent: Callable[..., RunningAgent]) -> RunningAgent:
    agent = make_agent(args=["--pinentry", "/usr/bin/pinentry-tty"])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=PASSPHRASE.encode() + b"\n")
    agent.cli("lock")
    return agent


def unlock_command(agent: RunningAgent) -> str:
    return shlex.join([sys.executable, "-m", "nomyo_agent", "--socket", agent.path, "unlock"])


def test_unlock_asks_on_the_callers_terminal_and_retries_after_a_wrong_passphrase(
    locked_agent: RunningAgent, terminal: Callable[[str], Terminal]
) -> None:
    term = terminal(unlock_command(locked_agent))
    term.wait_for("Passphrase:")
    assert "RSA-2048 key" in term.screen()  # the description names the key
    term.type("wrong")
    term.wait_for("Bad passphrase, try again")
    assert locked_agent.status().state is p.State.LOCKED
    term.type(PASSPHRASE)
    term.wait_for("EXIT=0")
    assert "unlocked" in term.screen()
    status = locked_agent.status()
    assert status.state is p.State.UNLOCKED
    assert status.counters.failed_unlocks == 1


def test_cancel_leaves_it_locked_with_exit_code_4(
    locked_agent: RunningAgent, terminal: Callable[[str], Terminal]
) -> None:
    term = terminal(unlock_command(locked_agent))
    term.wait_for("Passphrase:")
    term.tmux("send-keys", "-t", "cli", "C-d")  # end of input: pinentry-tty's cancel
    term.wait_for("EXIT=4")
    assert "nomyo-agent: cancelled" in term.screen()
    assert locked_agent.status().state is p.State.LOCKED


def test_without_a_terminal_or_display_unlock_says_how_to_proceed(
    locked_agent: RunningAgent,
) -> None:
    out = locked_agent.cli("unlock", check=False)  # stdin is a pipe: no tty, and no DISPLAY
    assert out.returncode == 1
    assert out.stderr.startswith("nomyo-agent: ")
    assert "no terminal or display to ask for the passphrase on" in out.stderr
    assert "--passphrase-stdin" in out.stderr
    assert locked_agent.status().state is p.State.LOCKED
