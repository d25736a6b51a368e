"""Where the agent listens, shared by the agent and every client.

Standard library only: clients import this on their start-up path. Resolution order, as
ARCHITECTURE.md fixes it and as ``SSH_AUTH_SOCK`` works for ssh:

1. ``NOMYO_AGENT_SOCK`` (for the agent and every client alike);
2. ``$XDG_RUNTIME_DIR/nomyo-agent/agent.sock`` (Linux desktops, systemd's ``%t``);
3. on macOS, ``~/Library/Application Support/nomyo-agent/agent.sock``, where the LaunchAgent
   that ``nomyo-agent install-service`` writes listens;
4. a private ``0700`` folder ``nomyo-agent-<uid>`` in the temp dir (minimal Linux sessions);
5. on Windows, the named pipe ``\\\\.\\pipe\\nomyo-agent-<user>``.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

__all__ = [
    "ENV_SOCK",
    "IS_WINDOWS",
    "SUN_PATH_MAX",
    "darwin_socket_path",
    "default_socket_path",
    "socket_path",
    "socket_path_problem",
]

ENV_SOCK = "NOMYO_AGENT_SOCK"
IS_WINDOWS = sys.platform == "win32"
# sockaddr_un's sun_path holds 108 bytes on Linux (104 on macOS and the BSDs), with the final NUL.
SUN_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


def darwin_socket_path(home: Path) -> str:
    """macOS: one fixed path per user, so that launchd's plist and every client agree on it."""
    return str(home / "Library" / "Application Support" / "nomyo-agent" / "agent.sock")


def default_socket_path(env: dict[str, str] | None = None) -> str:
    """The path the agent uses when ``NOMYO_AGENT_SOCK`` is not set."""
    env = dict(os.environ) if env is None else env
    if sys.platform == "win32":  # a literal test, so that mypy --platform win32 narrows
        from nomyo_agent._winpipe import default_pipe_name  # noqa: PLC0415 - Windows only

        return default_pipe_name()
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute():
        return str(Path(runtime) / "nomyo-agent" / "agent.sock")
    if sys.platform == "darwin":
        return darwin_socket_path(Path(env.get("HOME") or Path.home()))
    tmp = env.get("TMPDIR")
    if not tmp:
        import tempfile  # noqa: PLC0415 - ~3 ms that every client start would pay otherwise

        tmp = tempfile.gettempdir()
    return str(Path(tmp) / f"nomyo-agent-{os.getuid()}" / "agent.sock")


def socket_path(explicit: str | os.PathLike[str] | None = None) -> str:
    """The socket (or pipe) to use: an explicit path, else ``NOMYO_AGENT_SOCK``, else default."""
    if explicit:
        return os.fspath(explicit)
    from_env = os.environ.get(ENV_SOCK)
    if from_env:
        return from_env
    return default_socket_path()


def socket_path_problem(path: str) -> tuple[str, str] | None:
    """Why ``path`` cannot be the agent's socket, as (message, hint), or None if it can.

    Checked before anything touches the path: a socket straight in a shared folder such as
    ``/tmp`` would make the agent claim (and ``chmod``) a folder that is not its own, and a path
    over the ``AF_UNIX`` limit otherwise surfaces as a puzzling connection error.
    """
    if sys.platform == "win32":  # a named pipe; a literal test, so that mypy narrows
        return None
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        return (
            f"the socket path is {size} bytes, over the {SUN_PATH_MAX}-byte limit of Unix sockets",
            "choose a shorter --socket / NOMYO_AGENT_SOCK, e.g. in $XDG_RUNTIME_DIR",
        )
    folder = Path(path).parent
    try:
        st = os.stat(folder)
    except OSError:
        return None  # the agent creates it, 0700
    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        own = folder / f"nomyo-agent-{os.getuid()}" / Path(path).name
        return (
            f"{folder} is a shared folder (mode {stat.S_IMODE(st.st_mode):04o}): the socket "
            "needs a folder of its own (0700)",
            f"use --socket {own} (the agent creates the folder)",
        )
    return None
