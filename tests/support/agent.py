"""A real ``nomyo-agent serve`` process for one test, in the test's private desktop session.

``agent`` starts one with no identity; ``make_agent(**options)`` starts more, e.g. with a command
``prefix`` (``setpriv ...``), other timeouts, or a pinentry program. Each gets its own socket in
the session's runtime folder and is stopped (SIGTERM, then SIGKILL) at the end of the test.
Starting and waiting for readiness (the agent's ready pipe) is ``nomyo_devserver.agents``'s.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from nomyo_agent import protocol as p
from nomyo_devserver import agents, session
from nomyo_devserver.agents import AgentProcess
from support.desktop import Session


@dataclass
class RunningAgent(AgentProcess):
    """The harness's agent process, with the CLI and the calls tests use most."""

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

    def status(self) -> p.StatusReply:
        with self.connect() as conn:
            return conn.call(p.Status(), p.StatusReply)

    def keygen(self, bits: int = 2048, passphrase: bytes = b"") -> p.IdentityReply:
        """A fresh identity; an empty passphrase means none."""
        with self.connect(timeout=120) as conn:
            return conn.call(
                p.Generate(bits=bits, passphrase=passphrase, force=True), p.IdentityReply
            )


def start_agent(
    desktop: Session,
    *,
    name: str = "agent",
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> RunningAgent:
    """An agent on ``<runtime>/nomyo-agent/<name>.sock``, ready (its ready pipe said so)."""
    path = str(desktop.runtime_dir / "nomyo-agent" / f"{name}.sock")
    log = desktop.home / f"{name}.log"
    try:
        return agents.start_agent(
            desktop.env if env is None else env, path, log=log, args=args, prefix=prefix,
            kind=RunningAgent,
        )  # fmt: skip
    except session.SessionError:
        text = log.read_text(errors="replace") if log.exists() else ""
        pytest.fail(f"the agent did not become ready; its log:\n{text}")


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
