"""``nomyo_devserver.session`` and ``.agents``, the one throwaway-session harness of the demo,
the tests and the bench: it waits on what each part reports (the agent's ready pipe), never on a
fixed sleep, and leaves no process behind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from nomyo_agent import protocol as p
from nomyo_agent._launch import read_ready
from nomyo_devserver import agents, session
from support.desktop import Session, open_session


def test_the_ready_line_gives_the_pid() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"ready 4242\n")
    try:
        assert read_ready(read_fd, timeout=5) == 4242
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_pipe_closed_without_the_line_is_none_at_once() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"usage: nomyo-agent ...\n")
    # The writer goes a moment later, as a child that exits does.
    closer = threading.Timer(0.05, os.close, (write_fd,))
    closer.start()
    started = time.monotonic()
    try:
        assert read_ready(read_fd, timeout=30) is None
    finally:
        closer.join()
        os.close(read_fd)
    assert time.monotonic() - started < 5  # the end of the pipe, not the timeout


def test_no_line_within_the_timeout_raises() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(TimeoutError):
            read_ready(read_fd, timeout=0.1)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_an_agent_that_exits_first_is_reported_with_its_own_words(desktop: Session) -> None:
    path = str(desktop.runtime_dir / "nomyo-agent" / "dies.sock")
    started = time.monotonic()
    with pytest.raises(session.SessionError, match="pin-policy") as info:
        agents.start_agent(
            desktop.env, path, log=desktop.home / "dies.log", args=["--pin-policy", "bogus"],
            kind=agents.AgentProcess,
        )  # fmt: skip
    assert time.monotonic() - started < agents.READY_TIMEOUT / 2
    assert info.value.hint == f"see {desktop.home / 'dies.log'}"


def test_open_agent_is_ready_unlocked_and_stopped_after(desktop: Session) -> None:
    with agents.open_agent(desktop.env, bits=2048) as agent:
        assert agent.identity is not None
        assert agent.identity.bits == 2048
        status = agent.call(p.Status(), p.StatusReply)
        assert status.state is p.State.UNLOCKED
        assert status.pid == agent.pid
        assert agent.env["NOMYO_AGENT_SOCK"] == agent.path
    assert agent.proc.returncode == 0


def test_a_session_leaves_no_process_behind(desktop: Session, tmp_path: Path) -> None:
    """(``desktop`` checks the programs and marks this a real-parts test; a second session is
    opened here to watch it end.)"""
    with open_session(tmp_path) as other:
        assert other.name_has_owner("org.freedesktop.secrets")
        assert other.env["HOME"].startswith(str(tmp_path))
        assert other.bus_address != desktop.bus_address
        procs = list(other.procs)
        assert len(procs) == 2  # the bus and the keyring
    assert all(proc.returncode is not None for proc in procs)
