"""The client's side of the agent: its calls (seal, open, a key_dir import), each with a deadline.

Rules of this module:

- One ``AsyncAgentConnection`` per event loop and socket path (``_channel``), shared by every
  client object on that loop; each ``AgentLink`` is one user of its channel, and the last user to
  close closes the connection. The engine closes its link when the client is closed,
  garbage-collected or its loop shuts down. Connecting, ``Hello`` and auto-start are
  ``_channel``'s.
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
from collections.abc import Awaitable
from pathlib import Path
from typing import Final, TypeVar

from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_agent.paths import socket_path
from nomyo_client import _autostart
from nomyo_client._channel import Channel, acquire, release
from nomyo_client._errors import (
    AgentUnavailableError,
    InvalidRequestError,
    ResponseTooLargeError,
)
from nomyo_client._from_agent import from_agent_error

__all__ = ["DEFAULT_AGENT_TIMEOUT", "AgentLink"]

R = TypeVar("R", bound=p.Response)
T = TypeVar("T")

# Long enough for an on-demand passphrase prompt (the agent asks through pinentry while a seal
# waits), short enough that a hung agent is reported rather than waited on forever.
DEFAULT_AGENT_TIMEOUT: Final = 120.0


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
        self._channel: Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def hello(self) -> p.HelloReply | None:
        return None if self._channel is None else self._channel.hello

    def _shared(self) -> Channel:
        if self._channel is None:
            self._channel = acquire(self.path)
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
        if channel is not None and loop is not None and release(channel, loop):
            await channel.aclose()
