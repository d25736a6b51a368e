"""``nomyo-agent install-service``: hand the agent to the user's own service manager.

Linux gets two systemd user units (a socket that systemd listens on, a sandboxed service it
starts on the first connection); macOS gets a LaunchAgent whose ``Sockets`` entry launchd listens
on. Rules:

- Rendering is pure: ``plan()`` turns a program, a platform and an environment into file contents
  and the commands that start and undo them. Only ``install``/``uninstall`` touch the disk or run
  ``systemctl``/``launchctl``, and ``--print`` shows the plan without doing any of it.
- Every path written is absolute and resolved at install time (the program of *this*
  installation, this user's state folder), since neither systemd nor launchd knows our venv.
- The files in the repository's ``systemd/`` and ``launchd/`` folders are ``plan()``'s output for
  a pipx/uv-tool install; a test keeps them equal.
- ``install`` refuses, before writing anything, while an agent started by hand serves the socket
  the service manager would take over (that agent would live on, unreachable).

Example::

    the_plan = plan("linux", {"HOME": "/home/ada"}, ["/home/ada/.local/bin/nomyo-agent"])
    [f.path.name for f in the_plan.files]   # ['nomyo-agent.socket', 'nomyo-agent.service']
"""

from __future__ import annotations

import dataclasses
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from nomyo_agent import _proxy_service as _ps
from nomyo_agent._files import atomic_write
from nomyo_agent._unit_sandbox import SANDBOX
from nomyo_agent.errors import AgentAlreadyRunning, ServiceError, UsageError
from nomyo_agent.paths import UserDirs, darwin_socket_path, runtime_dir, user_dirs

__all__ = [
    "LABEL",
    "SERVICE_UNIT",
    "SOCKET_UNIT",
    "SYSTEMD_LISTEN",
    "Plan",
    "ServiceFile",
    "exec_quote",
    "install",
    "launchd_socket_path",
    "manager_reachable",
    "plan",
    "program_argv",
    "render_env_plist",
    "render_plist",
    "render_service_unit",
    "render_socket_unit",
    "uninstall",
]

SOCKET_UNIT = "nomyo-agent.socket"
SERVICE_UNIT = "nomyo-agent.service"
SYSTEMD_LISTEN = "%t/nomyo-agent/agent.sock"  # %t: the user's $XDG_RUNTIME_DIR
LABEL = "ai.nomyo.agent"
ENV_LABEL = "ai.nomyo.agent.environment"
MACOS_SUN_PATH = 104  # sizeof(sockaddr_un.sun_path), the terminating NUL included
SOCKET_NAME = "agent"  # LISTEN_FDNAMES on systemd, the Sockets key on launchd

_SOCKET_TEMPLATE = """\
[Unit]
Description=nomyo-agent socket (end-to-end encrypted LLM inference identity)

[Socket]
ListenStream={listen}
SocketMode=0600
DirectoryMode=0700
FileDescriptorName={name}
# The socket file belongs to systemd: it goes when the unit stops, not when the agent exits.
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

# Every sandbox option below was checked against a running agent (tests/test_systemd_*.py);
# docs/running.md lists the ones left out and why.
_SERVICE_TEMPLATE = (
    """\
[Unit]
Description=nomyo-agent (end-to-end encrypted LLM inference identity)
Requires={socket_unit}
After={socket_unit}

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# '+': outside the sandbox, which cannot start while a ReadWritePaths= folder is missing.
ExecStartPre=+/bin/mkdir -p -m 0700 {state_dir}
Restart=on-failure
RestartSec=1s
TimeoutStopSec=30s
UMask=0077
LimitCORE=0
# For mlockall (the agent maps ~50 MB). systemd clamps this to the user manager's own hard limit,
# so it is harmless where that is low and takes effect where the administrator raised it.
LimitMEMLOCK=infinity

# No network at all: only Unix sockets (the session bus, the X11/Wayland socket for pinentry).
RestrictAddressFamilies=AF_UNIX
IPAddressDeny=any
# Writable: the state folder only (router pins, public key, audit log).
"""
    + SANDBOX
    + """
[Install]
Also={socket_unit}
"""
)


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


def exec_quote(arg: str) -> str:
    """Quote one argument for a systemd ``Exec*=`` line (``%`` and ``$`` are special there)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\"'\\;"):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_socket_unit(listen: str = SYSTEMD_LISTEN) -> str:
    """The text of ``nomyo-agent.socket`` listening on ``listen`` (``%t`` allowed)."""
    return _SOCKET_TEMPLATE.format(listen=listen, name=SOCKET_NAME)


def render_service_unit(argv: Sequence[str], state_dir: str, *, specifiers: bool = False) -> str:
    """The text of ``nomyo-agent.service`` running ``argv serve``, writable ``state_dir``.

    With ``specifiers``, ``%h``-style specifiers in the arguments are kept (the shipped units);
    otherwise ``%`` and ``$`` are escaped so that any real path means itself.
    """
    quote = (lambda a: a) if specifiers else exec_quote
    return _SERVICE_TEMPLATE.format(
        socket_unit=SOCKET_UNIT,
        exec_start=" ".join(quote(a) for a in [*argv, "serve"]),
        state_dir=quote(state_dir),
    )


def render_plist(argv: Sequence[str], socket_path: str, log_path: str) -> bytes:
    """The LaunchAgent plist: launchd listens on ``socket_path`` and starts ``argv serve``."""
    document = {
        "Label": LABEL,
        "ProgramArguments": [*argv, "serve"],
        # launchd owns the listening socket; the agent takes it with launch_activate_socket().
        "Sockets": {SOCKET_NAME: {"SockPathName": socket_path, "SockPathMode": 0o600}},
        "EnvironmentVariables": {"NOMYO_AGENT_SOCK": socket_path},
        "ProcessType": "Background",
        "StandardErrorPath": log_path,
    }
    return plistlib.dumps(document, sort_keys=False)


def render_env_plist(socket_path: str) -> bytes:
    """A LaunchAgent run at every login that sets ``NOMYO_AGENT_SOCK`` for the GUI session.

    ``launchctl setenv`` lasts until logout; run at load, it holds for every session, so apps
    and Terminal's shells find the agent as they find ``SSH_AUTH_SOCK``.
    """
    document = {
        "Label": ENV_LABEL,
        "ProgramArguments": ["/bin/launchctl", "setenv", "NOMYO_AGENT_SOCK", socket_path],
        "RunAtLoad": True,
    }
    return plistlib.dumps(document, sort_keys=False)


def plan(
    platform: str = sys.platform,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    socket: str | None = None,
    *,
    proxy: bool = False,
) -> Plan:
    """Compute the files and commands for ``platform`` (``linux`` or ``darwin``); with
    ``proxy``, nomyo-proxy's socket-activated unit or LaunchAgent too (``_proxy_service``)."""
    env = os.environ if env is None else env
    argv = list(argv) if argv is not None else program_argv()
    dirs = user_dirs(platform, env)
    if platform.startswith("linux"):
        the_plan = _systemd_plan(dirs, argv, socket)
        return _with_systemd_proxy(the_plan, dirs, argv) if proxy else the_plan
    if platform == "darwin":
        uid = env.get("UID") or str(os.getuid())
        the_plan = _launchd_plan(dirs, argv, socket, uid)
        return _with_launchd_proxy(the_plan, dirs, argv, uid) if proxy else the_plan
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


def launchd_socket_path(home: Path) -> str:
    """Where the LaunchAgent listens: a folder of the user's that macOS never purges, and the
    path clients find by default on macOS (``paths.darwin_socket_path``)."""
    return darwin_socket_path(home)


def _launchd_plan(dirs: UserDirs, argv: Sequence[str], socket: str | None, uid: str) -> Plan:
    path = socket or launchd_socket_path(dirs.home)
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
