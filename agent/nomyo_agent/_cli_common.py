"""What every ``nomyo-agent`` command shares: exit codes, the connection to the agent, output.

The commands live in ``_cli_daemon`` (the agent process), ``_cli_identity`` (the key) and
``_cli_status`` (what the agent reports and keeps); ``_cli`` parses the command line.
"""

from __future__ import annotations

import argparse
import sys

from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_NO_AGENT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "INTERACTIVE_TIMEOUT",
    "call",
    "connect",
    "say",
]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_AGENT, EXIT_CANCELLED = 0, 1, 2, 3, 4

# Slow operations (key generation, a person typing a passphrase) must not hit a short timeout.
INTERACTIVE_TIMEOUT = 600.0


def connect(args: argparse.Namespace, timeout: float | None = 30.0) -> AgentConnection:
    return AgentConnection.open(args.socket, timeout=timeout)


def call(
    args: argparse.Namespace,
    request: p.Request,
    expect: type[p.Response],
    timeout: float | None = 30.0,
) -> p.Response:
    with connect(args, timeout) as conn:
        return conn.call(request, expect)


def say(text: str) -> None:
    print(text, file=sys.stderr)
