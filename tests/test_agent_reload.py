"""SIGHUP: the agent re-reads config.toml and keeps serving; a bad file changes nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from test_agent_limits import write_config

from nomyo_agent import protocol as p
from support.agent import RunningAgent
from support.desktop import Session
from support.waiting import wait_until


def test_sighup_reloads_the_settings_and_the_agent_keeps_serving(
    desktop: Session, make_agent: Callable[..., RunningAgent]
) -> None:
    write_config(desktop, '[agent]\nidle_timeout = 100\npin_policy = "tofu"\n')
    agent = make_agent()
    with agent.connect() as kept:  # a connection open across the reload
        assert kept.call(p.Status(), p.StatusReply).idle_timeout == 100
        write_config(desktop, '[agent]\nidle_timeout = 200\npin_policy = "off"\n')
        os.kill(agent.pid, signal.SIGHUP)
        wait_until("the reload", lambda: "SIGHUP: reloaded" in agent.log_text(), 20)
        status = kept.call(p.Status(), p.StatusReply)
        assert status.idle_timeout == 200
        assert kept.call(p.PinsList(), p.PinsReply).policy == "off"
    assert agent.proc.poll() is None
    assert Path(agent.path).exists()
    assert "idle_timeout=200.0" in agent.log_text()


def test_sighup_with_a_bad_file_keeps_the_old_settings_and_says_why(
    desktop: Session, make_agent: Callable[..., RunningAgent]
) -> None:
    path = write_config(desktop, "[agent]\nidle_timeout = 100\n")
    agent = make_agent()
    for bad in ("[agent]\nidle_timeout = nan\n", '[agent]\nauto_unlock = "false"\n', "[agent\n"):
        write_config(desktop, bad)
        before = agent.log_text().count("refused the new settings")
        os.kill(agent.pid, signal.SIGHUP)
        wait_until(
            "the refusal",
            lambda n=before: agent.log_text().count("refused the new settings") > n,  # type: ignore[misc]
            20,
        )
        assert agent.status().idle_timeout == 100
    log = agent.log_text()
    assert f"{path}: idle_timeout must be a finite number" in log
    assert f"{path}: auto_unlock must be true or false" in log
    assert agent.proc.poll() is None
    assert agent.cli("lock").returncode == 0
    # ... and SIGTERM still ends it cleanly, socket removed.
    assert agent.stop() == 0
    assert not Path(agent.path).exists()
