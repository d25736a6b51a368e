"""The one agent connection of an event loop for one socket path, shared by every client on it.

Rules of this module:

- One ``AsyncAgentConnection`` per event loop and socket path (a ``Channel``), shared by every
  client object on that loop: code ported from the public client makes a client per request
  and never closes it (that client has no ``close``), and must still hold one connection, not
  one per object. ``acquire`` counts a user in, ``release`` out; the last user closes the
  channel. Sockets cannot move between loops, so each loop has its own channel; a loop that is
  gone takes its channels with it.
- The connection serialises exchanges itself. Connecting happens once, under a lock.
- The first message is ``Hello``; an agent of another protocol version is an error, unless we
  started it ourselves (``HelloReply.autostarted``): then it is stopped and started again.
- If nothing answers and auto-start is on, ``nomyo-agent`` is started in the background.
"""

from __future__ import annotations

import asyncio
import threading
import weakref

from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_agent.connection import AsyncAgentConnection
from nomyo_client import _autostart
from nomyo_client._errors import AgentProtocolError
from nomyo_client._from_agent import from_agent_error

__all__ = ["Channel", "acquire", "release"]


class Channel:
    """The one agent connection of an event loop for one socket path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.hello: p.HelloReply | None = None
        self._conn: AsyncAgentConnection | None = None
        self._lock = asyncio.Lock()

    async def _open(self, autostart: bool) -> AsyncAgentConnection:
        try:
            conn = await AsyncAgentConnection.open(self.path)
        except agent_errors.AgentUnavailableError:
            if not autostart:
                raise
            await asyncio.to_thread(_autostart.start_agent, self.path)
            conn = await AsyncAgentConnection.open(self.path)
        # Where a prompt this client's requests cause may appear (unlock on demand, approval).
        from nomyo_agent._pinentry import pinentry_here  # noqa: PLC0415 - off the import path

        try:
            hello = await conn.call(
                p.Hello(client="nomyo_client", pinentry=pinentry_here()), p.HelloReply
            )
        except BaseException:
            await conn.aclose()
            raise
        if hello.protocol != p.PROTOCOL_VERSION:
            await conn.aclose()
            if not hello.autostarted or not autostart:
                raise AgentProtocolError(
                    f"the agent at {self.path} speaks protocol {hello.protocol}, "
                    f"this client speaks {p.PROTOCOL_VERSION}"
                )
            await asyncio.to_thread(_autostart.restart_stale, self.path)
            return await self._open(autostart)
        self.hello = hello
        return conn

    async def connection(self, autostart: bool) -> AsyncAgentConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._lock:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = await self._open(autostart)
                except agent_errors.AgentError as exc:
                    raise from_agent_error(exc) from exc
            return self._conn

    async def drop(self, conn: AsyncAgentConnection) -> None:
        if self._conn is conn:
            self._conn = None
        await conn.aclose()

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()


# Keyed weakly by loop: a loop that is gone takes its channels with it.
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Channel]] = (
    weakref.WeakKeyDictionary()
)
_channels_lock = threading.Lock()  # loops on several threads share the table


def acquire(path: str) -> Channel:
    loop = asyncio.get_running_loop()
    with _channels_lock:
        by_path = _channels.setdefault(loop, {})
        channel = by_path.get(path)
        if channel is None:
            channel = by_path[path] = Channel(path)
        channel.users += 1
        return channel


def release(channel: Channel, loop: asyncio.AbstractEventLoop) -> bool:
    """One user fewer; True when it was the last (the caller then closes the channel)."""
    with _channels_lock:
        channel.users -= 1
        if channel.users > 0:
            return False
        by_path = _channels.get(loop, {})
        if by_path.get(channel.path) is channel:
            del by_path[channel.path]
        return True
