"""``nomyo-agent install-service --proxy``: nomyo-proxy's socket-activated unit and LaunchAgent.

Pure rendering, as in ``_service`` (which merges these files into its plan): systemd listens on
127.0.0.1:12480 and starts ``nomyo-proxy serve`` on the first connection, handing it the socket
named ``proxy``; launchd does the same with a ``Sockets`` entry of that name. The proxy reads the
router and its API key from an environment file (systemd) or the LaunchAgent's environment, never
from its command line. The repository's ``systemd/nomyo-proxy.*`` and
``launchd/ai.nomyo.proxy.plist`` are this module's output for a pipx/uv-tool install.
"""

from __future__ import annotations

import plistlib
from collections.abc import Callable, Sequence
from pathlib import Path

from nomyo_agent._unit_sandbox import SANDBOX

__all__ = [
    "PROXY_LABEL",
    "PROXY_PORT",
    "PROXY_SERVICE_UNIT",
    "PROXY_SOCKET_NAME",
    "PROXY_SOCKET_UNIT",
    "env_file_path",
    "proxy_argv",
    "render_proxy_plist",
    "render_proxy_service_unit",
    "render_proxy_socket_unit",
]

PROXY_SOCKET_UNIT = "nomyo-proxy.socket"
PROXY_SERVICE_UNIT = "nomyo-proxy.service"
PROXY_LABEL = "ai.nomyo.proxy"
PROXY_PORT = 12480  # nomyo_proxy._cli.DEFAULT_PORT; a test keeps the two equal
PROXY_SOCKET_NAME = "proxy"  # LISTEN_FDNAMES on systemd, the Sockets key on launchd

_SOCKET_TEMPLATE = """\
[Unit]
Description=nomyo-proxy socket (local OpenAI-compatible endpoint)

[Socket]
# Loopback only: apps on this machine. nomyo-proxy refuses a foreign Host header as well.
ListenStream=127.0.0.1:{port}
FileDescriptorName={name}
NoDelay=yes

[Install]
WantedBy=sockets.target
"""

_SERVICE_TEMPLATE = (
    """\
[Unit]
Description=nomyo-proxy (local OpenAI-compatible endpoint, encrypted through nomyo-agent)
Requires={socket_unit}
After={socket_unit} {agent_socket_unit}
Wants={agent_socket_unit}

[Service]
ExecStart={exec_start}
# NOMYO_BASE_URL (the router) and NOMYO_API_KEY (its key): keep this file 0600.
EnvironmentFile=-{env_file}
Environment=NOMYO_AGENT_SOCK={agent_socket}
# '+': outside the sandbox, which cannot start while a ReadWritePaths= folder is missing.
ExecStartPre=+/bin/mkdir -p -m 0700 {state_dir}
Restart=on-failure
RestartSec=1s
UMask=0077
LimitCORE=0

# The network for the router; the token file's "last used" is the only thing it writes.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
"""
    + SANDBOX
    + """
[Install]
Also={socket_unit}
"""
)


def proxy_argv(agent_argv: Sequence[str]) -> list[str]:
    """The ``nomyo-proxy`` command of the installation whose ``nomyo-agent`` is ``agent_argv``."""
    argv = list(agent_argv)
    if argv[-2:] == ["-m", "nomyo_agent"]:
        return [*argv[:-1], "nomyo_proxy"]
    script = argv[-1]
    head, sep, _ = script.rpartition("/")
    return [*argv[:-1], f"{head}{sep}nomyo-proxy"]


def render_proxy_socket_unit() -> str:
    return _SOCKET_TEMPLATE.format(port=PROXY_PORT, name=PROXY_SOCKET_NAME)


def render_proxy_service_unit(
    argv: Sequence[str],
    state_dir: str,
    env_file: str,
    agent_socket: str,
    *,
    quote: Callable[[str], str],
    agent_socket_unit: str,
) -> str:
    """``nomyo-proxy.service`` running ``argv serve``; ``quote`` escapes for ``Exec*=`` lines."""
    return _SERVICE_TEMPLATE.format(
        socket_unit=PROXY_SOCKET_UNIT,
        agent_socket_unit=agent_socket_unit,
        exec_start=" ".join(quote(a) for a in [*argv, "serve"]),
        env_file=quote(env_file),
        agent_socket=quote(agent_socket),
        state_dir=quote(state_dir),
    )


def render_proxy_plist(argv: Sequence[str], agent_socket: str, log_path: str) -> bytes:
    """The proxy's LaunchAgent: launchd listens on 127.0.0.1 and starts ``argv serve``."""
    document = {
        "Label": PROXY_LABEL,
        "ProgramArguments": [*argv, "serve"],
        "Sockets": {
            PROXY_SOCKET_NAME: {
                "SockNodeName": "127.0.0.1",
                "SockServiceName": str(PROXY_PORT),
                "SockFamily": "IPv4",
            }
        },
        "EnvironmentVariables": {"NOMYO_AGENT_SOCK": agent_socket},
        "ProcessType": "Background",
        "StandardErrorPath": log_path,
    }
    return plistlib.dumps(document, sort_keys=False)


def env_file_path(config: Path) -> Path:
    """Where the systemd unit reads ``NOMYO_BASE_URL`` and ``NOMYO_API_KEY`` from, in the
    agent's configuration folder ``config`` (``paths.UserDirs.config``)."""
    return config / "proxy.env"
