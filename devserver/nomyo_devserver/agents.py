"""Throwaway agents in a throwaway session (``nomyo_devserver.session``): the demo's, the tests'
and the bench's.

``start_agent(env, path, log=..., kind=AgentProcess)`` runs ``nomyo-agent serve`` with the
session's environment and returns once the agent writes ``ready <pid>`` on its ready pipe
(``_launch.read_ready``); ``open_agent(env)`` adds a fresh identity, unlocked, and stops the
agent after. Example::

    with tempfile.TemporaryDirectory() as tmp, open_session(Path(tmp)) as session:
        with open_agent(session.env, bits=2048) as agent:
            agent.call(p.Status(), p.StatusReply)

Rules: readiness is the agent's own word on its ready pipe, never a fixed sleep, and an agent that
exits first is reported at once, with the last lines of its log, as a ``SessionError`` whose hint
names the log; every agent started here is stopped (SIGTERM, then SIGKILL), also on errors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nomyo_agent import protocol as p
from nomyo_agent._launch import agent_command, read_ready
from nomyo_agent.connection import AgentConnection
from nomyo_agent.paths import default_socket_path
from nomyo_devserver.session import SessionError

__all__ = ["READY_TIMEOUT", "AgentProcess", "open_agent", "start_agent"]

READY_TIMEOUT = 20.0

A = TypeVar("A", bound="AgentProcess")


@dataclass
class AgentProcess:
    """A ``nomyo-agent serve`` started by ``start_agent``."""

    path: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] = field(repr=False)
    log: Path
    pid: int = 0
    identity: p.IdentityReply | None = None  # set by open_agent

    def connect(self, timeout: float = 30.0) -> AgentConnection:
        return AgentConnection.open(self.path, timeout=timeout)

    def call(self, request: p.Request, expect: type[Any], timeout: float = 60.0) -> Any:
        """One request on a connection of its own."""
        with self.connect(timeout=timeout) as conn:
            return conn.call(request, expect)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` s); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(
    env: dict[str, str],
    path: str,
    *,
    log: Path,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    kind: type[A],
) -> A:
    """``nomyo-agent serve --socket path`` with ``env``, logging to ``log``; returns once the
    agent reports itself ready on its ready pipe. ``prefix`` goes before the command
    (``setpriv ...``); ``kind`` is the class returned (``AgentProcess`` or a subclass)."""
    run_env = dict(env)
    run_env.setdefault("NOMYO_AGENT_SOCK", path)
    read_fd, write_fd = os.pipe()
    try:
        with log.open("wb") as log_fh:
            proc = subprocess.Popen(
                [*prefix, *agent_command(), "serve", "--socket", path,
                 "--ready-fd", str(write_fd), *args],
                env=run_env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
                pass_fds=(write_fd,),
            )  # fmt: skip
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # ours; the agent's copy alone now tells whether it lives
    agent = kind(path=path, env=run_env, proc=proc, log=log)
    try:
        pid = read_ready(read_fd, READY_TIMEOUT)
    except TimeoutError:
        pid = None
    finally:
        os.close(read_fd)
    if pid is None:
        agent.stop()
        tail = " | ".join(agent.log_text().strip().splitlines()[-3:])
        raise SessionError(f"the agent did not become ready: {tail or 'no output'}", f"see {log}")
    agent.pid = pid
    return agent


@contextlib.contextmanager
def open_agent(
    env: dict[str, str], *, bits: int = 4096, path: str | None = None
) -> Iterator[AgentProcess]:
    """An agent on ``path`` (default: the session's default socket) with a new identity of
    ``bits`` (no passphrase, kept in the session's keyring), unlocked and ready; stopped after."""
    path = path or default_socket_path(env)
    agent = start_agent(env, path, log=Path(env["HOME"]) / "agent.log", kind=AgentProcess)
    try:
        agent.identity = agent.call(
            p.Generate(bits=bits, passphrase=b"", force=True), p.IdentityReply, timeout=120
        )
        yield agent
    finally:
        agent.stop()
