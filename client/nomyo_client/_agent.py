"""The client's side of the agent: one shared connection per event loop, with a deadline.

Rules of this module:

- One ``AsyncAgentConnection`` per event loop and socket path (a ``_Channel``), shared by every
  client object on that loop: code ported from the public client makes a client per request
  and never closes it (that client has no ``close``), and must still hold one connection, not
  one per object. Each ``AgentLink`` is one user of its channel; the last user to close closes
  the connection. The engine closes its link when the client is closed, garbage-collected or
  its loop shuts down. Sockets cannot move between loops, so each loop has its own channel.
- The connection serialises exchanges itself. Connecting happens once, under a lock.
- The first message is ``Hello``; an agent of another protocol version is an error, unless we
  started it ourselves (``HelloReply.autostarted``): then it is stopped and started again.
- If nothing answers and auto-start is on, ``nomyo-agent`` is started in the background.
- Every agent call (connecting included) obeys a deadline: the client's ``timeout`` when one was
  given, else ``DEFAULT_AGENT_TIMEOUT``. A stopped or hung agent fails the request with
  ``AgentUnavailableError`` instead of hanging the app; the late reply cannot desynchronise the
  connection, which is closed when its exchange is abandoned.
- A connection that breaks is reopened once per request; seal and open are safe to repeat.
- Agent errors become the client's exceptions here, ``from`` the original.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable
from pathlib import Path
from typing import Final, TypeVar

from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_agent.connection import AsyncAgentConnection
from nomyo_agent.paths import socket_path
from nomyo_client import _autostart
from nomyo_client._errors import (
    AgentProtocolError,
    AgentUnavailableError,
    InvalidRequestError,
    ResponseTooLargeError,
    from_agent_error,
)

__all__ = ["DEFAULT_AGENT_TIMEOUT", "AgentLink"]

R = TypeVar("R", bound=p.Response)
T = TypeVar("T")

# Long enough for an on-demand passphrase prompt (the agent asks through pinentry while a seal
# waits), short enough that a hung agent is reported rather than waited on forever.
DEFAULT_AGENT_TIMEOUT: Final = 120.0


class _Channel:
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
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Channel]] = (
    weakref.WeakKeyDictionary()
)
_channels_lock = threading.Lock()  # loops on several threads share the table


def _acquire(path: str) -> _Channel:
    loop = asyncio.get_running_loop()
    with _channels_lock:
        by_path = _channels.setdefault(loop, {})
        channel = by_path.get(path)
        if channel is None:
            channel = by_path[path] = _Channel(path)
        channel.users += 1
        return channel


def _release(channel: _Channel, loop: asyncio.AbstractEventLoop) -> bool:
    """One user fewer; True when it was the last (the caller then closes the channel)."""
    with _channels_lock:
        channel.users -= 1
        if channel.users > 0:
            return False
        by_path = _channels.get(loop, {})
        if by_path.get(channel.path) is channel:
            del by_path[channel.path]
        return True


class AgentLink:
    """One client's use of its loop's shared agent connection; see the module rules."""

    def __init__(
        self,
        path: str | None = None,
        *,
        autostart: bool | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.path = socket_path(path)
        self.autostart = _autostart.autostart_enabled() if autostart is None else autostart
        self.key_dir = None if key_dir is None else Path(key_dir)
        self.timeout = DEFAULT_AGENT_TIMEOUT if timeout is None else timeout
        self._channel: _Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def hello(self) -> p.HelloReply | None:
        return None if self._channel is None else self._channel.hello

    def _shared(self) -> _Channel:
        if self._channel is None:
            self._channel = _acquire(self.path)
            self._loop = asyncio.get_running_loop()
        return self._channel

    async def call(self, request: p.Request, expect: type[R], *, translate: bool = True) -> R:
        """One exchange within the deadline; a broken connection is reopened once."""
        return await self._within(self._call(request, expect, translate))

    async def _within(self, work: Awaitable[T]) -> T:
        """``work`` within the agent deadline, else ``AgentUnavailableError``."""
        try:
            async with asyncio.timeout(self.timeout):
                return await work
        except TimeoutError as exc:
            raise AgentUnavailableError(
                f"the agent at {self.path} did not answer within {self.timeout:g} s",
                hint="is it stopped or hung? check `nomyo-agent status`; the wait is the "
                f"client's timeout= (default {DEFAULT_AGENT_TIMEOUT:g} s)",
            ) from exc

    async def _call(self, request: p.Request, expect: type[R], translate: bool) -> R:
        channel = self._shared()
        for attempt in (1, 2):
            conn = await channel.connection(self.autostart)
            try:
                return await conn.call(request, expect)
            except p.FrameTooLarge as exc:
                if isinstance(request, p.Open):
                    raise  # open() words it as the answer being too large
                # Refused before sending: over the agent's cap for this operation.
                raise InvalidRequestError(f"the request is too large for the agent: {exc}") from exc
            except agent_errors.AgentConnectionError as exc:
                await channel.drop(conn)
                if attempt == 2:
                    raise from_agent_error(exc) from exc
            except agent_errors.AgentError as exc:
                if not translate:
                    raise
                raise from_agent_error(exc) from exc
        raise AssertionError("unreachable")

    async def _named(self, app: str) -> str:
        """``app`` for an agent that understands the field, else "": an agent without the "app"
        capability refuses it (its structs forbid unknown fields)."""
        if not app:
            return ""
        if self.hello is None:  # the capabilities come with the first Hello
            await self._within(self._shared().connection(self.autostart))
        hello = self.hello
        return app if hello is not None and "app" in hello.capabilities else ""

    async def seal(
        self, origin: str, router_key_pem: str, plaintext: bytes, app: str = ""
    ) -> p.SealReply:
        request = p.Seal(
            origin=origin,
            router_key_pem=router_key_pem,
            plaintext=plaintext,
            app=await self._named(app),
        )
        try:
            return await self.call(request, p.SealReply, translate=False)
        except agent_errors.NoIdentityError as exc:
            # A first run after the public client: adopt its key_dir's key, once.
            if not await self._import_key_dir():
                raise from_agent_error(exc) from exc
        except agent_errors.AgentError as exc:
            raise from_agent_error(exc) from exc
        return await self.call(request, p.SealReply)

    async def open(self, package: bytes, app: str = "") -> p.OpenReply:
        try:
            return await self.call(p.Open(package=package, app=await self._named(app)), p.OpenReply)
        except p.FrameTooLarge as exc:
            # Only a package over the transport's answer cap can be (an httpx client of the
            # caller's that let it through): the same error as the transport's own refusal.
            raise ResponseTooLargeError(
                f"the router's answer ({len(package)} bytes) is over what the agent opens "
                f"({exc.cap} bytes)",
                max_bytes=p.MAX_ANSWER_BYTES,
            ) from exc

    async def _import_key_dir(self) -> bool:
        if self.key_dir is None:
            return False
        pem_path = self.key_dir / "private_key.pem"
        try:
            pem = await asyncio.to_thread(pem_path.read_bytes)
        except OSError:
            return False
        await self.call(p.Import(pem=pem), p.IdentityReply)
        return True

    async def aclose(self) -> None:
        """Stop using the shared connection; the last user closes it."""
        channel, loop = self._channel, self._loop
        self._channel = self._loop = None
        if channel is not None and loop is not None and _release(channel, loop):
            await channel.aclose()
