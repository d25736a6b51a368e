"""nomyo-agent: one daemon per user that holds the RSA identity for end-to-end encrypted inference.

Importing this package is cheap and never imports ``cryptography``: it re-exports the protocol,
the error tree and the connection classes that clients use. The daemon itself lives in private
modules (``_server``, ``_dispatch``, ...) loaded only by ``nomyo-agent serve``.
"""

from __future__ import annotations

from nomyo_agent import protocol
from nomyo_agent.connection import AgentConnection, AsyncAgentConnection
from nomyo_agent.errors import AgentError, AgentUnavailableError
from nomyo_agent.paths import socket_path

__all__ = [
    "AgentConnection",
    "AgentError",
    "AgentUnavailableError",
    "AsyncAgentConnection",
    "__version__",
    "protocol",
    "socket_path",
]

__version__ = "0.1.0"
