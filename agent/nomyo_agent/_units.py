"""The text of the agent's service files: systemd user units and launchd plists, rendered pure.

Inputs in, text out: no file is read or written and nothing is run here (``_service_plan``
decides where each text goes, ``_service`` writes it). The sandbox that the agent's and the
proxy's units share is ``_unit_sandbox.SANDBOX``; the proxy's own files are ``_proxy_service``'s.
``tests/test_units.py`` compares the texts exactly, and parses them (plistlib, systemd's own
``systemd-analyze verify`` in ``tests/test_systemd_units.py``).

Example::

    render_socket_unit()    # '[Unit]\nDescription=nomyo-agent socket ...ListenStream=%t/...'
"""

from __future__ import annotations

import plistlib
from collections.abc import Sequence

from nomyo_agent._unit_sandbox import SANDBOX

__all__ = [
    "ENV_LABEL",
    "LABEL",
    "MACOS_SUN_PATH",
    "SERVICE_UNIT",
    "SOCKET_NAME",
    "SOCKET_UNIT",
    "SYSTEMD_LISTEN",
    "exec_quote",
    "render_env_plist",
    "render_plist",
    "render_service_unit",
    "render_socket_unit",
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
