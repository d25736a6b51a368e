"""Every folder and file location the agent, its clients, the installer and the tray use.

The one place that knows each platform's conventions; everyone else asks here (a test greps the
packages for ``XDG_``, ``Library/`` and ``APPDATA`` elsewhere). Standard library only and pure:
``user_dirs(platform, env)`` is a function of its inputs, so the installer can plan for another
platform and the tests can check each one anywhere. Clients import this on their start-up path,
which is why it states platformdirs' conventions (``appauthor=False``, not roaming) instead of
importing platformdirs: that costs about 9 ms of CPU per process here, platformdirs reads only
this process's environment (the installer plans for a given one), and its rules move between
releases (4.x reads ``XDG_*`` on macOS too). ``tests/test_paths.py`` holds the two to the same
answers.

==========  ==============================  =================================  ==================
folder      Linux and other Unixes (XDG)    macOS                              Windows
==========  ==============================  =================================  ==================
config      $XDG_CONFIG_HOME/nomyo-agent    ~/Library/Application Support/...  %LOCALAPPDATA%\\...
state       $XDG_STATE_HOME/nomyo-agent     ~/Library/Application Support/...  %LOCALAPPDATA%\\...
log         (state)/log                     ~/Library/Logs/nomyo-agent         (state)\\Logs
==========  ==============================  =================================  ==================

XDG variables count only when absolute (the XDG Base Directory spec); the defaults are
``~/.config`` and ``~/.local/state``. The service manager's folders follow from the same roots:
systemd user units in ``$XDG_CONFIG_HOME/systemd/user``, XDG autostart entries in
``$XDG_CONFIG_HOME/autostart``, LaunchAgents in ``~/Library/LaunchAgents``.

The socket, as ARCHITECTURE.md fixes it and as ``SSH_AUTH_SOCK`` works for ssh:

1. ``NOMYO_AGENT_SOCK`` (for the agent and every client alike);
2. ``$XDG_RUNTIME_DIR/nomyo-agent/agent.sock`` (Linux desktops, systemd's ``%t``);
3. on macOS, ``agent.sock`` in the state folder, where the LaunchAgent that
   ``nomyo-agent install-service`` writes listens;
4. a private ``0700`` folder ``nomyo-agent-<uid>`` in the temp dir (minimal Linux sessions);
5. on Windows, the named pipe ``\\\\.\\pipe\\nomyo-agent-<user>``.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "APP",
    "ENV_SOCK",
    "IS_WINDOWS",
    "SUN_PATH_MAX",
    "UserDirs",
    "config_path",
    "darwin_socket_path",
    "default_socket_path",
    "log_path",
    "runtime_dir",
    "socket_path",
    "socket_path_problem",
    "start_lock_path",
    "state_dir",
    "user_dirs",
]

APP = "nomyo-agent"
ENV_SOCK = "NOMYO_AGENT_SOCK"
IS_WINDOWS = sys.platform == "win32"
# sockaddr_un's sun_path holds 108 bytes on Linux (104 on macOS and the BSDs), with the final NUL.
SUN_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


@dataclass(frozen=True)
class UserDirs:
    """One user's folders on one platform (see the table in the module docstring)."""

    home: Path
    config: Path  # config.toml, proxy.env
    state: Path  # pins, public key, audit log, proxy tokens, identity.key (file key store)
    log: Path  # agent.log, nomyo-proxy.log
    config_home: Path  # the user's configuration root ($XDG_CONFIG_HOME; ~/Library on macOS)

    @property
    def systemd_units(self) -> Path:
        """Where systemd looks for a user's own units."""
        return self.config_home / "systemd" / "user"

    @property
    def xdg_autostart(self) -> Path:
        """Desktop entries that XDG desktops start at login."""
        return self.config_home / "autostart"

    @property
    def launch_agents(self) -> Path:
        """A user's own LaunchAgents (macOS)."""
        return self.home / "Library" / "LaunchAgents"


def _xdg(env: Mapping[str, str], var: str, default: Path) -> Path:
    value = env.get(var, "")
    return Path(value) if value and os.path.isabs(value) else default


def user_dirs(platform: str = sys.platform, env: Mapping[str, str] | None = None) -> UserDirs:
    """The folders of the user whose environment is ``env`` (default: this process's)."""
    env = os.environ if env is None else env
    if platform == "win32":
        home = Path(env.get("USERPROFILE") or Path.home())
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        app = local / APP
        roaming = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        return UserDirs(home=home, config=app, state=app, log=app / "Logs", config_home=roaming)
    home = Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        library = home / "Library"
        support = library / "Application Support" / APP
        return UserDirs(
            home=home,
            config=support,
            state=support,
            log=library / "Logs" / APP,
            config_home=library,
        )
    config_home = _xdg(env, "XDG_CONFIG_HOME", home / ".config")
    state = _xdg(env, "XDG_STATE_HOME", home / ".local" / "state") / APP
    return UserDirs(
        home=home, config=config_home / APP, state=state, log=state / "log", config_home=config_home
    )


def config_path() -> Path:
    """The agent's settings file (``_config``)."""
    return user_dirs().config / "config.toml"


def state_dir() -> Path:
    """Router pins, the public half of the identity, the audit log; the private key only with
    ``keystore = "file"`` (and then passphrase-encrypted)."""
    return user_dirs().state


def log_path(name: str = "agent.log") -> Path:
    """Where a background agent (or, named, another program of ours) writes its log."""
    return user_dirs().log / name


def runtime_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``$XDG_RUNTIME_DIR`` (systemd's ``%t``) when it is set and absolute, else None."""
    value = (os.environ if env is None else env).get("XDG_RUNTIME_DIR", "")
    return Path(value) if value and os.path.isabs(value) else None


def darwin_socket_path(home: Path) -> str:
    """macOS: one fixed path per user, so that launchd's plist and every client agree on it."""
    return str(user_dirs("darwin", {"HOME": str(home)}).state / "agent.sock")


def default_socket_path(env: Mapping[str, str] | None = None, platform: str = sys.platform) -> str:
    """The path the agent uses when ``NOMYO_AGENT_SOCK`` is not set."""
    env = os.environ if env is None else env
    if sys.platform == "win32":  # a literal test, so that mypy --platform win32 narrows
        from nomyo_agent._winpipe import default_pipe_name  # noqa: PLC0415 - Windows only

        return default_pipe_name()
    runtime = runtime_dir(env)
    if runtime is not None:
        return str(runtime / APP / "agent.sock")
    if platform == "darwin":
        return darwin_socket_path(Path(env.get("HOME") or Path.home()))
    tmp = env.get("TMPDIR")
    if not tmp:
        import tempfile  # noqa: PLC0415 - ~3 ms that every client start would pay otherwise

        tmp = tempfile.gettempdir()
    return str(Path(tmp) / f"{APP}-{os.getuid()}" / "agent.sock")


def start_lock_path(socket: str) -> str:
    """The lock file that agent starters serialise on (``_launch``): beside the socket, or, for a
    Windows pipe, which has no folder, in the temp folder."""
    if sys.platform == "win32":
        import tempfile  # noqa: PLC0415

        return os.path.join(tempfile.gettempdir(), os.path.basename(socket) + ".start")
    return socket + ".start"


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
        own = folder / f"{APP}-{os.getuid()}" / Path(path).name
        return (
            f"{folder} is a shared folder (mode {stat.S_IMODE(st.st_mode):04o}): the socket "
            "needs a folder of its own (0700)",
            f"use --socket {own} (the agent creates the folder)",
        )
    return None
