"""The client's side of the agent: one shared connection, opened lazily, healed once.

Rules of this module:

- One ``AsyncAgentConnection`` per client and event loop, shared by every concurrent request (the
  connection serialises exchanges itself). Connecting happens once, under a lock.
- The first message is ``Hello``; an agent of another protocol version is an error, unless we
  started it ourselves (``HelloReply.autostarted``): then it is stopped and started again.
- If nothing answers and auto-start is on, ``nomyo-agent`` is started in the background.
- A connection that breaks is reopened once per request; seal and open are safe to repeat.
- Agent errors become the client's exceptions here, ``from`` the original.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TypeVar

from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_agent.connection import AsyncAgentConnection
from nomyo_agent.paths import socket_path
from nomyo_client import _autostart
from nomyo_client._errors import AgentProtocolError, from_agent_error

__all__ = ["AgentLink"]

R = TypeVar("R", bound=p.Response)


class AgentLink:
    """A lazily opened, shared connection to the agent, bound to one event loop."""

    def __init__(
        self,
        path: str | None = None,
        *,
        autostart: bool | None = None,
        key_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = socket_path(path)
        self.autostart = _autostart.autostart_enabled() if autostart is None else autostart
        self.key_dir = None if key_dir is None else Path(key_dir)
        self.hello: p.HelloReply | None = None
        self._conn: AsyncAgentConnection | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> AsyncAgentConnection:
        try:
            conn = await AsyncAgentConnection.open(self.path)
        except agent_errors.AgentUnavailableError:
            if not self.autostart:
                raise
            await asyncio.to_thread(_autostart.start_agent, self.path)
            conn = await AsyncAgentConnection.open(self.path)
        try:
            hello = await conn.call(p.Hello(client="nomyo_client"), p.HelloReply)
        except BaseException:
            await conn.aclose()
            raise
        if hello.protocol != p.PROTOCOL_VERSION:
            await conn.aclose()
            if not hello.autostarted or not self.autostart:
                raise AgentProtocolError(
                    f"the agent at {self.path} speaks protocol {hello.protocol}, "
                    f"this client speaks {p.PROTOCOL_VERSION}"
                )
            await asyncio.to_thread(_autostart.restart_stale, self.path)
            return await self._open()
        self.hello = hello
        return conn

    async def connection(self) -> AsyncAgentConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._lock:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = await self._open()
                except agent_errors.AgentError as exc:
                    raise from_agent_error(exc) from exc
            return self._conn

    async def call(self, request: p.Request, expect: type[R], *, translate: bool = True) -> R:
        """One exchange; a broken connection is reopened once, agent errors are translated."""
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                return await conn.call(request, expect)
            except agent_errors.AgentConnectionError as exc:
                await self._drop(conn)
                if attempt == 2:
                    raise from_agent_error(exc) from exc
            except agent_errors.AgentError as exc:
                if not translate:
                    raise
                raise from_agent_error(exc) from exc
        raise AssertionError("unreachable")

    async def _drop(self, conn: AsyncAgentConnection) -> None:
        if self._conn is conn:
            self._conn = None
        await conn.aclose()

    def _app(self, app: str) -> str:
        # An agent without the "app" capability refuses the field (its structs forbid unknown
        # ones): name the app only to an agent that said it understands it.
        hello = self.hello
        return app if hello is not None and "app" in hello.capabilities else ""

    async def seal(
        self, origin: str, router_key_pem: str, plaintext: bytes, app: str = ""
    ) -> p.SealReply:
        await self.connection()  # the capabilities come with the first Hello
        request = p.Seal(
            origin=origin, router_key_pem=router_key_pem, plaintext=plaintext, app=self._app(app)
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
        await self.connection()
        return await self.call(p.Open(package=package, app=self._app(app)), p.OpenReply)

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
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()
