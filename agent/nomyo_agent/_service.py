"""``nomyo-agent install-service``: hand the agent to the user's own service manager.

Linux gets two systemd user units (a socket that systemd listens on, a sandboxed service it
starts on the first connection); macOS gets a LaunchAgent whose ``Sockets`` entry launchd listens
on. This module is the I/O: writing the files and running ``systemctl``/``launchctl``. What to
write is ``_service_plan.plan()`` (pure; ``--print`` shows it without doing any of it), the
files' text is ``_units`` (and ``_proxy_service`` for ``--proxy``). Rules:

- The files in the repository's ``systemd/`` and ``launchd/`` folders are ``plan()``'s output for
  a pipx/uv-tool install; a test keeps them equal.
- ``install`` refuses, before writing anything, while an agent started by hand serves the socket
  the service manager would take over (that agent would live on, unreachable).
- Each file is replaced atomically (``_files.atomic_write``): a concurrent ``daemon-reload``
  never reads half a unit.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from nomyo_agent._files import atomic_write
from nomyo_agent._service_plan import Plan, ServiceFile, plan
from nomyo_agent._units import SOCKET_UNIT
from nomyo_agent.errors import AgentAlreadyRunning, ServiceError
from nomyo_agent.paths import runtime_dir, user_dirs

__all__ = ["install", "manager_reachable", "uninstall"]


# --- I/O: everything below writes files or runs the service manager ------------------------------


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def manager_reachable(platform: str = sys.platform) -> bool:
    """Whether this session's service manager answers (no user manager in containers, ssh...)."""
    if platform.startswith("linux"):
        if shutil.which("systemctl") is None:
            return False
        return _run(["systemctl", "--user", "show-environment"]).returncode == 0
    return platform == "darwin" and shutil.which("launchctl") is not None


def _write(file: ServiceFile) -> None:
    # Never a half-written unit for a concurrent daemon-reload; 0644 as the manager's own are.
    atomic_write(file.path, file.content, mode=0o644)


def _resolve(listen: str) -> str:
    """systemd's ``%t`` as this session sees it."""
    runtime = runtime_dir()
    return str(runtime) + listen[2:] if listen.startswith("%t") and runtime else listen


def _refuse_a_running_agent(the_plan: Plan) -> None:
    """The service manager would unbind a socket a hand-started agent serves, orphaning it."""
    if sys.platform.startswith("linux"):
        active = _run(["systemctl", "--user", "is-active", "--quiet", SOCKET_UNIT])
        if active.returncode == 0:
            return  # re-installing: the agent that answers is the service's own
    from nomyo_agent._launch import running_agent  # noqa: PLC0415 - only when installing

    path = _resolve(the_plan.socket_path)
    hello = running_agent(path, timeout=5.0)
    if hello is not None:
        raise AgentAlreadyRunning(
            f"an agent started outside the service manager (pid {hello.pid}) serves {path}",
            hint="stop it first (`nomyo-agent stop`), then run install-service again",
        )


def install(
    *,
    print_only: bool = False,
    start: bool = True,
    socket: str | None = None,
    proxy: bool = False,
    out: TextIO,
) -> int:
    """Write the service files, then enable and start the socket if the manager is reachable.

    Refuses, before writing anything, while an agent started by hand serves the same socket.
    Raises ``ServiceError`` (exit 1) after writing when no service manager answers: the files are
    there, but nothing was started.
    """
    the_plan = plan(socket=socket, proxy=proxy)
    if print_only:
        for file in the_plan.files:
            out.write(f"# {file.path}\n{file.content.decode()}\n")
        for cmd in the_plan.start:
            out.write(f"# then: {shlex.join(cmd)}\n")
        return 0
    reachable = start and manager_reachable()
    if start:
        # With or without a manager that answers now: once the units run, they would take the
        # socket from the hand-started agent (or fail to bind it) at the next login.
        _refuse_a_running_agent(the_plan)
    for file in the_plan.files:
        _write(file)
        out.write(f"wrote {file.path}\n")
    dirs = user_dirs()
    if sys.platform.startswith("linux"):
        # A missing ReadWritePaths= folder stops the sandbox from starting at all.
        dirs.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        Path(the_plan.socket_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # launchd opens StandardErrorPath but creates no folder for it.
        dirs.log.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not start:
        out.write("not started (--no-start); start it with: " + _commands(the_plan.start) + "\n")
    elif not reachable:
        out.write(f"to undo: {the_plan.undo}\n")
        # Not a success: nothing will start the agent until someone runs these commands.
        raise ServiceError(
            "the service manager of this session does not answer, so nothing was started "
            "(the files are written)",
            hint=f"in your desktop session, run: {_commands(the_plan.start)}",
        )
    else:
        for cmd in the_plan.start:
            result = _run(cmd)
            if result.returncode != 0:
                raise ServiceError(
                    f"`{shlex.join(cmd)}` failed: {result.stderr.strip() or result.returncode}",
                    hint=f"the files are written; undo with `{the_plan.undo}`",
                )
            out.write(f"ran {shlex.join(cmd)}\n")
        where = _resolve(the_plan.socket_path)
        out.write(f"the agent now starts on the first connection to {where}\n")
    out.write(f"to undo: {the_plan.undo}\n")
    return 0


def uninstall(*, out: TextIO) -> int:
    """Stop and disable the service if it runs, then remove the files ``install`` wrote."""
    the_plan = plan(proxy=True)  # removes the proxy's files too, when there are any
    if manager_reachable() and any(f.path.exists() for f in the_plan.files):
        for cmd in the_plan.stop:
            # Failing here is fine (the unit may not be loaded); the files go either way.
            if _run(cmd).returncode == 0:
                out.write(f"ran {shlex.join(cmd)}\n")
    for file in the_plan.files:
        if file.path.exists():
            file.path.unlink()
            out.write(f"removed {file.path}\n")
    if sys.platform.startswith("linux") and manager_reachable():
        _run(["systemctl", "--user", "daemon-reload"])
    return 0


def _commands(cmds: Sequence[Sequence[str]]) -> str:
    return " && ".join(shlex.join(c) for c in cmds)
