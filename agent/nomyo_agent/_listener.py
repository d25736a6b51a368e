"""Where the agent listens: the socket it owns from bind to unlink, or the named pipe.

Rules:

- A Unix socket is bound by ``_bind`` (folder rules, 0600 from creation, a live agent's socket is
  never replaced), or inherited from systemd/launchd; on Windows the named pipe's accept loop
  (``_winpipe``) stands in for it. Each accepted connection gets a protocol from the factory
  given, with its peer when the transport already knows it (a pipe), else None.
- ``close`` stops accepting; ``remove`` then unlinks the socket, and only one this process
  bound (an inherited socket belongs to the service manager).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from typing import Protocol

from nomyo_agent._bind import Bound, bind_socket
from nomyo_agent._state import Peer

__all__ = ["Listener", "listen"]

ProtocolFactory = Callable[[Peer | None], asyncio.Protocol]


class _Closable(Protocol):
    def close(self) -> None: ...


class _PipeServer:
    """The named-pipe accept loop, closed like an ``asyncio.Server``."""

    def __init__(self, task: asyncio.Future[None]) -> None:
        self._task = task

    def close(self) -> None:
        self._task.cancel()


class Listener:
    """An open listener: ``close`` stops accepting, ``remove`` unlinks what was bound here."""

    def __init__(self, server: _Closable, bound: Bound | None) -> None:
        self._server = server
        self._bound = bound

    def close(self) -> None:
        self._server.close()

    def remove(self) -> None:
        if self._bound is not None:
            self._bound.remove()
            self._bound = None


async def listen(path: str, inherited: socket.socket | None, factory: ProtocolFactory) -> Listener:
    """Accept connections at ``path`` (or on ``inherited``), each served by ``factory``."""
    if sys.platform == "win32":
        from nomyo_agent._winpipe import serve_pipe  # noqa: PLC0415 - Windows only

        def on_pipe(pid: int) -> asyncio.Protocol:
            # The pipe's DACL admits only our user and rejects remote clients, so the kernel
            # has done the uid check; the pid is for the tray's "recent apps".
            return factory(Peer(pid=pid, uid=-1, gid=-1, exe=f"pid {pid}"))

        return Listener(_PipeServer(asyncio.ensure_future(serve_pipe(path, on_pipe))), None)
    bound = None
    sock = inherited
    if sock is None:
        bound = bind_socket(path)
        sock = bound.sock
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: factory(None), sock=sock)
    return Listener(server, bound)
