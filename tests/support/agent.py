"""A real ``nomyo-agent serve`` process for one test, in the test's private desktop session.

``agent`` starts one with no identity; ``make_agent(**options)`` starts more, e.g. with a command
``prefix`` (``setpriv ...``), other timeouts, or a pinentry program. Each gets its own socket in
the session's runtime folder and is stopped (SIGTERM, then SIGKILL) at the end of the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from support.desktop import Session

READY_TIMEOUT = 20.0


@dataclass
class RunningAgent:
    path: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path
    pid: int = 0
    _stopped: bool = field(default=False, repr=False)

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``nomyo-agent ARGS`` against this agent; ``check`` asserts exit code 0."""
        result = subprocess.run(
            [sys.executable, "-m", "nomyo_agent", "--socket", self.path, *args],
            env=self.env,
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        text = subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"nomyo-agent {' '.join(args)} exited {result.returncode}:\n{text.stderr}\n"
                f"agent log:\n{self.log_text()}"
            )
        return text

    def connect(self, timeout: float = 30.0) -> AgentConnection:
        return AgentConnection.open(self.path, timeout=timeout)

    def status(self) -> p.StatusReply:
        with self.connect() as conn:
            return conn.call(p.Status(), p.StatusReply)

    def keygen(self, bits: int = 2048, passphrase: bytes = b"") -> p.IdentityReply:
        """A fresh identity; an empty passphrase means none."""
        with self.connect(timeout=120) as conn:
            return conn.call(
                p.Generate(bits=bits, passphrase=passphrase, force=True), p.IdentityReply
            )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stopped = True
        return self.proc.returncode


def start_agent(
    desktop: Session,
    *,
    name: str = "agent",
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> RunningAgent:
    path = str(desktop.runtime_dir / "nomyo-agent" / f"{name}.sock")
    run_env = dict(desktop.env if env is None else env)
    run_env.setdefault("NOMYO_AGENT_SOCK", path)
    log = desktop.home / f"{name}.log"
    read_fd, write_fd = os.pipe()
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "nomyo_agent", "serve", "--socket", path,
             "--ready-fd", str(write_fd), *args],
            env=run_env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
            pass_fds=(write_fd,),
        )  # fmt: skip
    os.close(write_fd)
    agent = RunningAgent(path=path, env=run_env, proc=proc, log=log)
    deadline = time.monotonic() + READY_TIMEOUT
    got = b""
    try:
        os.set_blocking(read_fd, False)
        while not got.endswith(b"\n"):
            if time.monotonic() > deadline or proc.poll() is not None:
                agent.stop()
                pytest.fail(f"the agent did not become ready; its log:\n{agent.log_text()}")
            try:
                chunk = os.read(read_fd, 64)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:
                time.sleep(0.01)
                continue
            got += chunk
    finally:
        os.close(read_fd)
    agent.pid = int(got.split()[1])
    return agent


@pytest.fixture
def make_agent(desktop: Session) -> Iterator[Callable[..., RunningAgent]]:
    started: list[RunningAgent] = []

    def make(**options: object) -> RunningAgent:
        agent = start_agent(desktop, **options)  # type: ignore[arg-type]
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


@pytest.fixture
def agent(make_agent: Callable[..., RunningAgent]) -> RunningAgent:
    """A running agent with no identity, in the test's private desktop session."""
    return make_agent()


@pytest.fixture
def ready_agent(agent: RunningAgent) -> RunningAgent:
    """A running agent with a fresh 2048-bit identity, unlocked."""
    agent.keygen(bits=2048)
    return agent
