"""Unlock on demand (issue 12, item 2): with ``unlock_on_demand = true`` a seal that finds the
identity locked makes the agent ask for the passphrase through a real pinentry (pinentry-tty)
on the asking app's terminal, then answers; concurrent requests wait on that one prompt; a
cancelled or timed-out prompt fails them with the locked error.

The app is the real client library in a script (``support.apps``) run in a tmux pane.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from nomyo_agent import protocol as p
from nomyo_agent.errors import LockedError
from support.agent import RunningAgent
from support.apps import router_pem
from support.desktop import Session
from support.terminal import Terminal
from support.waiting import wait_until

PASSPHRASE = "on demand"


def write_config(desktop: Session, text: str) -> None:
    config = desktop.home / ".config" / "nomyo-agent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def locked_agent(
    make_agent: Callable[..., RunningAgent], desktop: Session, extra: str = ""
) -> RunningAgent:
    write_config(desktop, f"[agent]\nunlock_on_demand = true\n{extra}")
    agent = make_agent(args=["--pinentry", "/usr/bin/pinentry-tty"])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=PASSPHRASE.encode() + b"\n")
    agent.cli("lock")
    assert agent.status().state is p.State.LOCKED
    return agent


@pytest.mark.slow
def test_a_seal_on_a_locked_agent_asks_on_the_apps_terminal_and_is_served(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = locked_agent(make_agent, desktop)
    term = terminal(sealing_app(agent))
    term.wait_for("Passphrase:")
    screen = term.screen()
    assert "app.py (python" in screen, screen
    assert "asks to use it" in screen, screen
    term.type("wrong")
    term.wait_for("Bad passphrase, try again")
    term.type(PASSPHRASE)
    term.wait_for("EXIT=0")
    assert "SEALED" in term.screen()
    st = agent.status()
    assert (st.state, st.counters.seals) == (p.State.UNLOCKED, 1)


@pytest.mark.slow
def test_cancel_fails_the_request_with_the_locked_error(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = locked_agent(make_agent, desktop)
    term = terminal(sealing_app(agent))
    term.wait_for("Passphrase:")
    term.tmux("send-keys", "-t", "cli", "C-d")  # end of input: pinentry-tty's cancel
    term.wait_for("EXIT=0")
    assert "FAILED AgentLockedError the agent is locked: the passphrase entry was cancelled" in (
        term.screen()
    )
    assert agent.status().state is p.State.LOCKED


@pytest.mark.slow
def test_an_unanswered_prompt_times_out_to_locked_and_leaves_no_pinentry(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = locked_agent(make_agent, desktop, "prompt_timeout = 2\n")
    term = terminal(sealing_app(agent))
    term.wait_for("Passphrase:")
    term.wait_for("EXIT=0", timeout=15)
    assert "FAILED AgentLockedError the agent is locked:" in term.screen()
    assert agent.status().state is p.State.LOCKED
    children = subprocess.run(
        ["pgrep", "-P", str(agent.pid)], capture_output=True, text=True, check=False
    ).stdout
    assert children == "", f"a pinentry outlived its prompt: {children}"


@pytest.mark.slow
def test_two_apps_at_once_wait_on_one_prompt(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = locked_agent(make_agent, desktop)
    first = terminal(sealing_app(agent), name="first")
    first.wait_for("Passphrase:")
    # The second app runs with no terminal and no display: alone it could never be asked, so it
    # is served only because it waits on the first app's prompt.
    second = subprocess.Popen(
        shlex.split(sealing_app(agent)), env=desktop.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Hello, then Seal: both counted once the second app's seal waits on the prompt.
        base = agent.status().counters.requests
        polls = 1

        def waiting() -> bool:
            nonlocal polls
            polls += 1
            return agent.status().counters.requests - base - polls >= 1

        wait_until("the second app's seal", waiting)
        first.type(PASSPHRASE)
        first.wait_for("EXIT=0")
        out, _ = second.communicate(timeout=20)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    assert "SEALED" in first.screen()
    assert out.strip() == "SEALED"
    assert agent.status().counters.seals == 2
    assert first.screen().count("Passphrase:") == 1


@pytest.mark.slow
def test_an_app_that_names_no_terminal_is_answered_locked_at_once(
    make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    agent = locked_agent(make_agent, desktop)
    pem = router_pem()
    with agent.connect(timeout=10) as conn:
        conn.call(p.Hello(client="test"), p.HelloReply)  # no pinentry: never prompt
        with pytest.raises(LockedError, match="the agent is locked"):
            conn.call(
                p.Seal(origin="https://router.example", router_key_pem=pem, plaintext=b"{}"),
                p.SealReply,
            )


@pytest.mark.slow
def test_off_by_default(
    make_agent: Callable[..., RunningAgent],
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = make_agent(args=["--pinentry", "/usr/bin/pinentry-tty"])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=PASSPHRASE.encode() + b"\n")
    agent.cli("lock")
    term = terminal(sealing_app(agent))
    term.wait_for("EXIT=0")
    assert "FAILED AgentLockedError" in term.screen()
    assert "Passphrase:" not in term.screen()


def test_settings_are_checked(tmp_path: Path) -> None:
    from nomyo_agent._config import ConfigError, load_config

    path = tmp_path / "config.toml"
    assert (
        load_config(path, environ={}).unlock_on_demand,
        load_config(path, environ={}).prompt_timeout,
    ) == (False, 60)
    for bad, message in (
        ('unlock_on_demand = "yes"', "unlock_on_demand must be true or false"),
        ("prompt_timeout = 0", "prompt_timeout must be a number of seconds > 0"),
        ("prompt_timeout = true", "prompt_timeout must be a number of seconds > 0"),
    ):
        path.write_text(f"[agent]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path, environ={})


@pytest.mark.slow
def test_an_identity_without_passphrase_asks_to_confirm_after_an_explicit_lock(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    write_config(desktop, "[agent]\nunlock_on_demand = true\n")
    agent = make_agent(args=["--pinentry", "/usr/bin/pinentry-tty"])
    agent.keygen(bits=2048)  # no passphrase
    agent.cli("lock")  # explicit: no auto-unlock until someone says so
    for name, key, expected in (("no", "k", "FAILED AgentLockedError"), ("yes", "u", "SEALED")):
        term = terminal(sealing_app(agent), name=name)
        term.wait_for("Unlock it?")
        term.wait_for("[uk]?")
        term.type(key)
        term.wait_for("EXIT=0")
        assert sealing_app.result().startswith(expected)  # type: ignore[attr-defined]
    assert agent.status().state is p.State.UNLOCKED
