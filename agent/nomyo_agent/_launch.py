"""Starting an agent in the background, once, as ``nomyo-agent start`` and client auto-start do.

Standard library only (plus the protocol): the thin client calls this on its start-up path.

Rules: starters serialise on an flock beside the socket, so two clients that find no agent at the
same moment start exactly one; the child reports readiness itself by writing ``ready`` on a pipe
once it accepts connections (no polling of the socket); a child that dies first leaves the tail of
its log in the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import AgentError, AgentUnavailableError
from nomyo_agent.paths import socket_path

__all__ = ["log_path", "running_agent", "start_background"]

READY = b"ready"  # the child writes "ready <pid>\n"


def log_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "nomyo-agent" / "agent.log"


def running_agent(path: str, timeout: float = 5.0) -> p.HelloReply | None:
    """The agent's hello if one answers at ``path``, else None."""
    try:
        with AgentConnection.open(path, timeout=timeout) as conn:
            return conn.call(p.Hello(client="nomyo-agent start"), p.HelloReply)
    except AgentUnavailableError:
        return None


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def start_background(
    path: str | None = None,
    *,
    autostarted: bool = False,
    timeout: float = 10.0,
    extra_args: list[str] | None = None,
) -> tuple[int, bool]:
    """Make sure an agent serves ``path``; returns (its pid, whether this call started it)."""
    path = socket_path(path)
    folder = Path(path).parent
    old = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    lock_fd = os.open(path + ".start", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        hello = running_agent(path)
        if hello is not None:
            return hello.pid, False
        return _spawn(path, autostarted, timeout, extra_args or []), True
    finally:
        os.close(lock_fd)


def _spawn(path: str, autostarted: bool, timeout: float, extra_args: list[str]) -> int:
    log = log_path()
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "nomyo_agent", "serve", "--socket", path]
    # --daemon: the child forks once more and exits, so the agent is reparented to init (or the
    # session's subreaper) and never lingers as our zombie; its pid comes back on the pipe.
    argv += ["--daemon", "--ready-fd", str(write_fd), *extra_args]
    if autostarted:
        argv.append("--autostarted")
    try:
        with log.open("ab") as log_fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                pass_fds=(write_fd,),
                start_new_session=True,  # no controlling terminal, no SIGHUP when it closes
                close_fds=True,
            )
    finally:
        os.close(write_fd)
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while not got.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                proc.kill()
                raise AgentError(
                    f"the agent did not become ready within {timeout:g} s",
                    hint=f"see {log}",
                )
            chunk = os.read(read_fd, 64)
            if not chunk:
                break
            got += chunk
    finally:
        os.close(read_fd)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    word, _, pid = got.strip().partition(b" ")
    if word != READY or not pid.isdigit():
        raise AgentError(
            f"the agent failed to start: {_tail(log) or 'no output'}", hint=f"see {log}"
        )
    return int(pid)
