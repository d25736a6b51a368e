"""Starting an agent in the background, once, as ``nomyo-agent start`` and client auto-start do.

Standard library only (plus the protocol): the thin client calls this on its start-up path.

Rules: starters serialise on an flock beside the socket, so two clients that find no agent at the
same moment start exactly one; the child reports readiness itself by writing ``ready`` on a pipe
once it accepts connections (no polling of the socket); a child that dies first is reported by what
*it* wrote to the shared log (read from the log's size before the spawn), so errors of earlier
failed starts and start-up warnings never stand in for this start's cause.

Nothing from the caller's working directory runs: the child is ``python -P -m nomyo_agent`` (no
script or current folder on ``sys.path``), started in ``/`` with an absolute socket path, and
the daemon stays in ``/``. The starters' lock file and its folder follow ``_files`` and
``_sockdir``: opened without following symlinks, in a folder of the user's own.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from nomyo_agent import protocol as p
from nomyo_agent._files import lock_exclusive, open_lock_file
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import AgentError, AgentUnavailableError, StartFailedError
from nomyo_agent.paths import legacy_log_path, log_path, socket_path, start_lock_path

__all__ = [
    "adopt_legacy_log",
    "agent_command",
    "read_ready",
    "running_agent",
    "start_background",
    "start_error",
]

READY = b"ready"  # the child writes "ready <pid>\n"


def agent_command() -> list[str]:
    """``nomyo-agent`` as this interpreter runs it, with no caller-controlled folder on
    ``sys.path``: ``-m`` alone would put the working directory first, where anyone who can
    write there could plant a ``nomyo_agent`` package. Run it with ``cwd="/"``."""
    return [sys.executable, "-P", "-m", "nomyo_agent"]


def running_agent(path: str, timeout: float = 5.0) -> p.HelloReply | None:
    """The agent's hello if one answers at ``path``, else None."""
    try:
        with AgentConnection.open(path, timeout=timeout) as conn:
            return conn.call(p.Hello(client="nomyo-agent start"), p.HelloReply)
    except AgentUnavailableError:
        return None


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def start_error(text: str) -> tuple[str, str]:
    """This start's own error and hint, from what the child appended to the log.

    The CLI's failures are ``nomyo-agent: ...`` and ``hint: ...`` lines; the daemon logs
    ``nomyo-agent[pid]: LEVEL: ...``. Warnings and info (the memlock warning, "listening on")
    are not the cause; a traceback's cause is its last line.
    """
    error = hint = ""
    fallback = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("hint: "):
            hint = line[len("hint: ") :]
        elif line.startswith("nomyo-agent: "):
            error = line[len("nomyo-agent: ") :]
        elif ": ERROR: " in line or ": CRITICAL: " in line:
            error = line.split(": ", 2)[-1]
        elif ": WARNING: " not in line and ": INFO: " not in line and ": DEBUG: " not in line:
            fallback = line
    return error or fallback, hint


def _lock_path(path: str) -> str:
    """The starters' lock file (``paths.start_lock_path``), its folder made private first."""
    if sys.platform != "win32":
        from nomyo_agent import _sockdir  # noqa: PLC0415 - POSIX only

        _sockdir.private_folder(os.path.dirname(path))
    return start_lock_path(path)


def start_background(
    path: str | None = None,
    *,
    autostarted: bool = False,
    timeout: float = 10.0,
    extra_args: list[str] | None = None,
) -> tuple[int, bool]:
    """Make sure an agent serves ``path``; returns (its pid, whether this call started it)."""
    path = socket_path(path)
    if sys.platform != "win32":
        path = os.path.abspath(path)  # the agent runs in /
    lock_fd = open_lock_file(_lock_path(path))
    try:
        lock_exclusive(lock_fd)
        hello = running_agent(path)
        if hello is not None:
            return hello.pid, False
        return _spawn(path, autostarted, timeout, extra_args or []), True
    finally:
        os.close(lock_fd)


def adopt_legacy_log(log: Path) -> None:
    """Move the log an earlier version wrote (``paths.legacy_log_path``) to ``log``, unless
    ``log`` exists already; a move that fails (another file system) leaves both alone."""
    old = legacy_log_path()
    if old == log or log.exists() or not old.is_file():
        return
    with contextlib.suppress(OSError):
        os.replace(old, log)


def _spawn_windows(path: str, autostarted: bool, timeout: float, extra_args: list[str]) -> int:
    """Windows has neither fork nor fd passing: start a detached process, then wait until the
    pipe answers (not tested here: see docs/running.md)."""
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    adopt_legacy_log(log)
    offset = _log_size(log)
    argv = [*agent_command(), "serve", "--socket", path, *extra_args]
    if autostarted:
        argv.append("--autostarted")
    flags = getattr(subprocess, "DETACHED_PROCESS", 0) | getattr(
        subprocess, "CREATE_NEW_PROCESS_GROUP", 0
    )
    with log.open("ab") as log_fh:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=log_fh,
            creationflags=flags,
            cwd=os.path.abspath(os.sep),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hello = running_agent(path, timeout=1.0)
        if hello is not None:
            proc.returncode = 0  # it lives on detached; Popen must not warn about it
            return hello.pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise _start_failed(log, offset)


def _start_failed(log: Path, offset: int) -> AgentError:
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        text = ""
    error, hint = start_error(text)
    where = f"the full log is {log}"
    return AgentError(
        f"the agent failed to start: {error or 'it gave no reason'}",
        hint=f"{hint}; {where}" if hint else where,
    )


def _spawn(path: str, autostarted: bool, timeout: float, extra_args: list[str]) -> int:
    if sys.platform == "win32":
        return _spawn_windows(path, autostarted, timeout, extra_args)
    log = log_path()
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    adopt_legacy_log(log)
    offset = _log_size(log)
    read_fd, write_fd = os.pipe()
    argv = [*agent_command(), "serve", "--socket", path]
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
                cwd="/",
            )
    finally:
        os.close(write_fd)
    try:
        pid = read_ready(read_fd, timeout)
    except TimeoutError:
        proc.kill()
        raise StartFailedError(
            f"the agent did not become ready within {timeout:g} s", hint=f"see {log}"
        ) from None
    finally:
        os.close(read_fd)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if pid is None:
        raise _start_failed(log, offset)
    return pid


def read_ready(read_fd: int, timeout: float) -> int | None:
    """The pid from the ``ready <pid>`` line an agent writes on its ``--ready-fd`` once it
    accepts connections; None when the pipe closed without one (the agent exited first).

    The one reader of that line (``nomyo-agent start``, client auto-start, and the throwaway
    sessions of the demo, the tests and the bench): it waits on the pipe, never polls, and
    raises ``TimeoutError`` after ``timeout`` seconds. The caller must have closed its own copy
    of the write end, or an agent that dies is never noticed.
    """
    deadline = time.monotonic() + timeout
    got = b""
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            raise TimeoutError(f"no ready line within {timeout:g} s")
        chunk = os.read(read_fd, 64)
        if not chunk:
            break
        got += chunk
    word, _, pid = got.strip().partition(b" ")
    return int(pid) if word == READY and pid.isdigit() else None
