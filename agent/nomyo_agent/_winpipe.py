"""Windows named-pipe transport (built in the service-manager issue).

The pipe ``\\\\.\\pipe\\nomyo-agent-<user>`` stands where the Unix socket does elsewhere.
"""

from __future__ import annotations

import asyncio
import getpass
from typing import Any

__all__ = ["connect_pipe", "default_pipe_name", "open_pipe_connection"]


def default_pipe_name() -> str:
    return rf"\\.\pipe\nomyo-agent-{getpass.getuser()}"


def connect_pipe(name: str, timeout: float | None) -> Any:
    raise NotImplementedError("named pipes are not implemented yet")


async def open_pipe_connection(name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    raise NotImplementedError("named pipes are not implemented yet")
