"""Every folder and file location the agent, its clients, the installer and the tray use.

The one place that knows where things live; everyone else asks here (a test scans the packages
for ``XDG_``, ``Library/``, ``APPDATA`` and ``platformdirs`` elsewhere).

The config, state and log folders are platformdirs' (``appauthor=False``, not roaming): a
well-kept library already knows each platform's conventions and follows them as they move, so
we do not write them out again. ``user_dirs(platform)`` asks platformdirs' class for that
platform, which reads this process's environment (``HOME``, ``XDG_*``, ``%LOCALAPPDATA%``), so
the installer can plan for another platform and the tests choose one by setting the
environment. platformdirs is imported inside the functions that need a folder, never at module
level: clients import this module on their start-up path and need only the socket, and the
import costs about 9 ms of CPU per process (A/B over 10 runs); ``tests/test_paths.py`` checks
that ``import nomyo_client`` and a socket lookup do not load it (on Linux and Windows).

What stays ours, derived here in one place because it is no platform convention platformdirs
knows: systemd's user units in ``<config root>/systemd/user`` and XDG autostart entries in
``<config root>/autostart``, where the config root is platformdirs' ``user_config_dir``
without an app name (``$XDG_CONFIG_HOME``, default ``~/.config``); LaunchAgents in
``~/Library/LaunchAgents``. docs/running.md's "Where files live" lists the concrete folders,
which the per-platform tests pin (so a platformdirs release that moves one is noticed).

The socket is our protocol, not a platform convention, so its rules are written here, as
ARCHITECTURE.md fixes them and as ``SSH_AUTH_SOCK`` works for ssh:

1. ``NOMYO_AGENT_SOCK`` (for the agent and every client alike);
2. ``$XDG_RUNTIME_DIR/nomyo-agent/agent.sock`` (Linux desktops, systemd's ``%t``);
3. on macOS, ``agent.sock`` in the state folder, where the LaunchAgent that
   ``nomyo-agent install-service`` writes listens. The state folder is platformdirs' (which
   honours ``XDG_STATE_HOME`` on macOS too), so a macOS client without ``NOMYO_AGENT_SOCK``
   imports platformdirs: a hand-written copy would be a second home that could disagree with
   the installer's, and a LaunchAgent-started session has ``NOMYO_AGENT_SOCK`` set anyway;
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from platformdirs.api import PlatformDirsABC

__all__ = [
    "APP",
    "ENV_SOCK",
    "IS_WINDOWS",
    "SUN_PATH_MAX",
    "UserDirs",
    "config_path",
    "darwin_socket_path",
    "default_socket_path",
    "legacy_log_path",
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
    """One user's folders on one platform (docs/running.md, "Where files live")."""

    home: Path
    config: Path  # config.toml, proxy.env
    state: Path  # pins, public key, audit log, proxy tokens, identity.key (file key store)
    log: Path  # agent.log, nomyo-proxy.log
    config_root: Path  # platformdirs' user_config_dir without an app name ($XDG_CONFIG_HOME)

    @property
    def systemd_units(self) -> Path:
        """Where systemd looks for a user's own units."""
        return self.config_root / "systemd" / "user"

    @property
    def xdg_autostart(self) -> Path:
        """Desktop entries that XDG desktops start at login."""
        return self.config_root / "autostart"

    @property
    def launch_agents(self) -> Path:
        """A user's own LaunchAgents (macOS)."""
        return self.home / "Library" / "LaunchAgents"


def _platformdirs(platform: str) -> type[PlatformDirsABC]:
    """platformdirs' class for ``platform``: any of them runs anywhere, which lets the installer
    plan for another platform."""
    if platform == "win32":
        from platformdirs.windows import Windows  # noqa: PLC0415 - lazily: see the docstring

        return Windows
    if platform == "darwin":
        from platformdirs.macos import MacOS  # noqa: PLC0415

        return MacOS
    from platformdirs.unix import Unix  # noqa: PLC0415

    return Unix


def user_dirs(platform: str = sys.platform) -> UserDirs:
    """This process's user's folders on ``platform`` (default: this one), from its environment."""
    kind = _platformdirs(platform)
    app = kind(APP, appauthor=False, roaming=False)
    return UserDirs(
        home=Path.home(),
        config=Path(app.user_config_dir),
        state=Path(app.user_state_dir),
        log=Path(app.user_log_dir),
        config_root=Path(kind(appauthor=False, roaming=False).user_config_dir),
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


def legacy_log_path() -> Path:
    """Where ``nomyo-agent start`` wrote the agent's log before the log folder was platformdirs'
    (``$XDG_STATE_HOME``, else ``~/.local/state``, on every platform): ``_launch`` moves a log
    found there into ``log_path()`` once, so that the one place people are told to look has
    it."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / APP / "agent.log"


def runtime_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``$XDG_RUNTIME_DIR`` (systemd's ``%t``) when it is set and absolute, else None."""
    value = (os.environ if env is None else env).get("XDG_RUNTIME_DIR", "")
    return Path(value) if value and os.path.isabs(value) else None


def darwin_socket_path() -> str:
    """macOS: one fixed path per user, so that launchd's plist and every client agree on it."""
    return str(user_dirs("darwin").state / "agent.sock")


def default_socket_path(env: Mapping[str, str] | None = None, platform: str = sys.platform) -> str:
    """The path the agent uses when ``NOMYO_AGENT_SOCK`` is not set: ``env`` (default: this
    process's) gives ``XDG_RUNTIME_DIR`` and ``TMPDIR``; the macOS state folder is this
    process's user's (platformdirs reads only ``os.environ``)."""
    env = os.environ if env is None else env
    if sys.platform == "win32":  # a literal test, so that mypy --platform win32 narrows
        from nomyo_agent._winpipe import default_pipe_name  # noqa: PLC0415 - Windows only

        return default_pipe_name()
    runtime = runtime_dir(env)
    if runtime is not None:
        return str(runtime / APP / "agent.sock")
    if platform == "darwin":
        return darwin_socket_path()
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
