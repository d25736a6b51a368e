"""What ``nomyo-agent install-service`` installs on one platform, computed without touching
anything: the files (their paths from ``paths``, their text from ``_units`` and
``_proxy_service``) and the commands that start and undo them.

Rules: ``plan()`` is a function of a platform, this process's environment (the folders, from
``paths``) and a program, writing nothing, so the installer can print it (``--print``) and the
tests can check Linux and macOS plans anywhere (with ``HOME`` and ``XDG_*`` set for the test);
every path in it is absolute and resolved at install time (the program of *this* installation,
this user's state folder), since neither systemd nor launchd knows our venv.

Example::

    the_plan = plan("linux", ["/home/ada/.local/bin/nomyo-agent"])
    [f.path.name for f in the_plan.files]   # ['nomyo-agent.socket', 'nomyo-agent.service']
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nomyo_agent import _proxy_service as _ps
from nomyo_agent._units import (
    ENV_LABEL,
    LABEL,
    MACOS_SUN_PATH,
    SERVICE_UNIT,
    SOCKET_UNIT,
    SYSTEMD_LISTEN,
    exec_quote,
    render_env_plist,
    render_plist,
    render_service_unit,
    render_socket_unit,
)
from nomyo_agent.errors import ServiceError, UsageError
from nomyo_agent.paths import UserDirs, darwin_socket_path, user_dirs

__all__ = ["Plan", "ServiceFile", "launchd_socket_path", "plan", "program_argv"]


@dataclass(frozen=True)
class ServiceFile:
    """One file the installer writes."""

    path: Path
    content: bytes


@dataclass(frozen=True)
class Plan:
    """What ``install-service`` does on one platform, computed without touching anything."""

    files: tuple[ServiceFile, ...]
    start: tuple[tuple[str, ...], ...]  # commands that enable and start the socket
    stop: tuple[tuple[str, ...], ...]  # commands that stop and disable it (run before removal)
    socket_path: str  # where clients find the agent; systemd's %t kept as is
    undo: str  # the one command that undoes the installation


def program_argv(executable: str | None = None) -> list[str]:
    """The absolute command that runs this installation's ``nomyo-agent``.

    The console script next to the interpreter when there is one (a venv, pipx, uv tool), else
    ``python -P -m nomyo_agent`` (``-P``: the unit's working folder stays off ``sys.path``).
    Paths are made absolute but not resolved: resolving a venv's ``python`` symlink would escape
    the venv.
    """
    python = os.path.abspath(executable or sys.executable)
    script = Path(python).parent / ("nomyo-agent.exe" if sys.platform == "win32" else "nomyo-agent")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [python, "-P", "-m", "nomyo_agent"]


def plan(
    platform: str = sys.platform,
    argv: Sequence[str] | None = None,
    socket: str | None = None,
    *,
    proxy: bool = False,
    uid: int | None = None,
) -> Plan:
    """Compute the files and commands for ``platform`` (``linux`` or ``darwin``) in this
    process's user's folders; with ``proxy``, nomyo-proxy's socket-activated unit or
    LaunchAgent too (``_proxy_service``). ``uid`` (default: ours) names launchd's domain."""
    argv = list(argv) if argv is not None else program_argv()
    if platform.startswith("linux"):
        dirs = user_dirs(platform)
        the_plan = _systemd_plan(dirs, argv, socket)
        return _with_systemd_proxy(the_plan, dirs, argv) if proxy else the_plan
    if platform == "darwin":
        dirs, user = user_dirs(platform), str(os.getuid() if uid is None else uid)
        the_plan = _launchd_plan(dirs, argv, socket, user)
        return _with_launchd_proxy(the_plan, dirs, argv, user) if proxy else the_plan
    raise ServiceError(
        f"install-service does not support {platform} yet",
        hint="start the agent at login with `nomyo-agent start`, or let clients auto-start it",
    )


def _systemd_plan(dirs: UserDirs, argv: Sequence[str], socket: str | None) -> Plan:
    units, state = dirs.systemd_units, dirs.state
    files = (
        ServiceFile(units / SOCKET_UNIT, render_socket_unit(socket or SYSTEMD_LISTEN).encode()),
        ServiceFile(units / SERVICE_UNIT, render_service_unit(argv, str(state)).encode()),
    )
    ctl = ("systemctl", "--user")
    return Plan(
        files=files,
        start=((*ctl, "daemon-reload"), (*ctl, "enable", "--now", SOCKET_UNIT)),
        stop=((*ctl, "disable", "--now", SOCKET_UNIT, SERVICE_UNIT),),
        socket_path=socket or SYSTEMD_LISTEN,
        undo=shlex.join([*argv, "uninstall-service"]),
    )


def _with_systemd_proxy(the_plan: Plan, dirs: UserDirs, argv: Sequence[str]) -> Plan:
    units = dirs.systemd_units
    env_file = _ps.env_file_path(dirs.config)
    service = _ps.render_proxy_service_unit(
        _ps.proxy_argv(argv),
        str(dirs.state),
        str(env_file),
        the_plan.socket_path,
        quote=lambda a: a if a.startswith("%t/") else exec_quote(a),
        agent_socket_unit=SOCKET_UNIT,
    )
    ctl = ("systemctl", "--user")
    return dataclasses.replace(
        the_plan,
        files=(
            *the_plan.files,
            ServiceFile(units / _ps.PROXY_SOCKET_UNIT, _ps.render_proxy_socket_unit().encode()),
            ServiceFile(units / _ps.PROXY_SERVICE_UNIT, service.encode()),
        ),
        start=(*the_plan.start, (*ctl, "enable", "--now", _ps.PROXY_SOCKET_UNIT)),
        # Apart from the agent's: a failure for units never installed must not keep it running.
        stop=(
            *the_plan.stop,
            (*ctl, "disable", "--now", _ps.PROXY_SOCKET_UNIT, _ps.PROXY_SERVICE_UNIT),
        ),
    )


def _with_launchd_proxy(the_plan: Plan, dirs: UserDirs, argv: Sequence[str], uid: str) -> Plan:
    plist = dirs.launch_agents / f"{_ps.PROXY_LABEL}.plist"
    log = str(dirs.log / "nomyo-proxy.log")
    content = _ps.render_proxy_plist(_ps.proxy_argv(argv), the_plan.socket_path, log)
    return dataclasses.replace(
        the_plan,
        files=(*the_plan.files, ServiceFile(plist, content)),
        start=(*the_plan.start, ("launchctl", "bootstrap", f"gui/{uid}", str(plist))),
        stop=(*the_plan.stop, ("launchctl", "bootout", f"gui/{uid}/{_ps.PROXY_LABEL}")),
    )


def launchd_socket_path() -> str:
    """Where the LaunchAgent listens: a folder of the user's that macOS never purges, and the
    path clients find by default on macOS (``paths.darwin_socket_path``)."""
    return darwin_socket_path()


def _launchd_plan(dirs: UserDirs, argv: Sequence[str], socket: str | None, uid: str) -> Plan:
    path = socket or launchd_socket_path()
    if len(os.fsencode(path)) >= MACOS_SUN_PATH:
        raise UsageError(
            f"the socket path {path} is longer than macOS allows ({MACOS_SUN_PATH - 1} bytes)",
            hint="pass a shorter one with --socket",
        )
    log = str(dirs.log / "agent.log")
    agents = dirs.launch_agents
    plist, env_plist = agents / f"{LABEL}.plist", agents / f"{ENV_LABEL}.plist"
    domain = f"gui/{uid}"
    return Plan(
        files=(
            ServiceFile(plist, render_plist(argv, path, log)),
            ServiceFile(env_plist, render_env_plist(path)),
        ),
        # Bootstrapping the second one runs its setenv at once: apps started from now on find
        # the agent; it runs again at every login.
        start=(
            ("launchctl", "bootstrap", domain, str(plist)),
            ("launchctl", "bootstrap", domain, str(env_plist)),
        ),
        stop=(
            ("launchctl", "bootout", f"{domain}/{LABEL}"),
            ("launchctl", "bootout", f"{domain}/{ENV_LABEL}"),
            ("launchctl", "unsetenv", "NOMYO_AGENT_SOCK"),
        ),
        socket_path=path,
        undo=shlex.join([*argv, "uninstall-service"]),
    )
