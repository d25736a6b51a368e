"""Talking to a running agent: a blocking and an asyncio connection over the same protocol.

One module of about 300 lines on purpose: the two connections are the same exchange written
twice (connect, trust checks, frame, check the reply), and a change to one must be seen beside
the other.

Standard library and ``nomyo_agent.protocol`` only, so that the CLI, the tray and the thin client
can use it without importing ``cryptography``.

Each connection sends one request and reads one response at a time. The async connection holds a
lock around that exchange, so that many tasks may share it; the blocking one is for one thread.
An ``Error`` reply is raised as the matching ``nomyo_agent.errors`` class; a transport failure as
``AgentUnavailableError`` (nothing listens) or ``AgentConnectionError`` (it broke mid-way).

Trust runs both ways: before connecting, the socket's folder must be the user's own (not a
symlink, not open to others), and right after connecting, before the first byte is sent, the
listener's uid must be the user's; else ``UnsafeSocketError`` (``_sockdir`` has the rules).

Example::

    with AgentConnection.open() as agent:
        status = agent.call(Status(), StatusReply)
        print(status.state)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Protocol, TypeVar, cast

import msgspec

from nomyo_agent import protocol as p
from nomyo_agent.errors import (
    AgentConnectionError,
    AgentUnavailableError,
    UnsafeSocketError,
    from_reply,
)
from nomyo_agent.paths import socket_path

__all__ = ["AgentConnection", "AsyncAgentConnection"]

R = TypeVar("R", bound=p.Response)

# Connecting to a path with no listener gives one of these: the agent is simply not there.
_UNAVAILABLE = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.EACCES}


def _unavailable(path: str, exc: OSError) -> AgentUnavailableError:
    return AgentUnavailableError(f"no agent is listening at {path} ({exc.strerror or exc})")


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _check(reply: p.Response, expect: type[R]) -> R:
    if isinstance(reply, p.Error):
        raise from_reply(reply)
    if not isinstance(reply, expect):
        raise AgentConnectionError(
            f"the agent answered {type(reply).__name__} where {expect.__name__} was expected"
        )
    return reply


def _decode(body: bytes) -> p.Response:
    try:
        return p.decode_response(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AgentConnectionError(
            f"the agent sent a message this client cannot read: {exc}"
        ) from exc


def _length(header: bytes) -> int:
    (length,) = p.HEADER.unpack(header)
    if length > p.MAX_FRAME_BYTES:
        raise AgentConnectionError(f"the agent sent a {length}-byte frame, over the cap")
    return int(length)


class _Stream(Protocol):
    """What a blocking connection needs of its transport: a Unix socket or a Windows pipe."""

    def settimeout(self, timeout: float | None) -> None: ...
    def sendall(self, data: bytes | bytearray) -> None: ...
    def recv_into(self, buffer: memoryview) -> int: ...
    def close(self) -> None: ...


class AgentConnection:
    """A blocking connection, for command-line tools and scripts."""

    def __init__(self, sock: _Stream, path: str) -> None:
        self._sock = sock
        self.path = path

    @classmethod
    def open(cls, path: str | None = None, timeout: float | None = 30.0) -> AgentConnection:
        """Connect to the agent at ``path`` (default: ``paths.socket_path()``)."""
        path = socket_path(path)
        if sys.platform == "win32":
            from nomyo_agent._winpipe import connect_pipe  # noqa: PLC0415 - Windows only

            return cls(cast(_Stream, connect_pipe(path, timeout)), path)
        from nomyo_agent import _sockdir  # noqa: PLC0415 - POSIX only

        _sockdir.check_folder(_folder(path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            _sockdir.check_peer(sock, path)
        except UnsafeSocketError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            if exc.errno in _UNAVAILABLE or isinstance(exc, (FileNotFoundError, ConnectionError)):
                raise _unavailable(path, exc) from exc
            raise AgentConnectionError(f"cannot connect to the agent at {path}: {exc}") from exc
        return cls(sock, path)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def send(self, request: p.Request) -> None:
        try:
            self._sock.sendall(p.encode_frame(request))
        except OSError as exc:
            raise AgentConnectionError(f"lost the agent connection while sending: {exc}") from exc

    def _recv_exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        try:
            while got < n:
                k = self._sock.recv_into(view[got:])
                if k == 0:
                    raise AgentConnectionError("the agent closed the connection")
                got += k
        except TimeoutError as exc:
            raise AgentConnectionError("the agent did not answer in time") from exc
        except OSError as exc:
            raise AgentConnectionError(f"lost the agent connection: {exc}") from exc
        return bytes(buf)

    def receive(self) -> p.Response:
        length = _length(self._recv_exactly(p.HEADER.size))
        return _decode(self._recv_exactly(length))

    def request(self, request: p.Request) -> p.Response:
        """Send one request and return the raw response (an ``Error`` is returned, not raised)."""
        self.send(request)
        return self.receive()

    def call(self, request: p.Request, expect: type[R]) -> R:
        """Send one request; return the expected reply or raise the agent's error."""
        return _check(self.request(request), expect)

    def watch(self) -> Iterator[p.StateEvent]:
        """Subscribe to state changes; yields events until the agent goes away."""
        self.send(p.Watch())
        self.settimeout(None)
        while True:
            try:
                event = self.receive()
            except AgentConnectionError:
                return
            yield _check(event, p.StateEvent)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAgentConnection:
    """An asyncio connection that many tasks may share: one exchange at a time, in order."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: str | None = None) -> AsyncAgentConnection:
        path = socket_path(path)
        try:
            if sys.platform == "win32":
                from nomyo_agent._winpipe import open_pipe_connection  # noqa: PLC0415

                reader, writer = await open_pipe_connection(path)
            else:
                from nomyo_agent import _sockdir  # noqa: PLC0415 - POSIX only

                _sockdir.check_folder(_folder(path))
                reader, writer = await asyncio.open_unix_connection(
                    path, limit=p.MAX_FRAME_BYTES + p.HEADER.size
                )
                try:
                    _sockdir.check_peer(writer.get_extra_info("socket"), path)
                except UnsafeSocketError:
                    writer.close()
                    raise
        except OSError as exc:
            if exc.errno in _UNAVAILABLE or isinstance(exc, (FileNotFoundError, ConnectionError)):
                raise _unavailable(path, exc) from exc
            raise AgentConnectionError(f"cannot connect to the agent at {path}: {exc}") from exc
        return cls(reader, writer, path)

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    async def _receive(self) -> p.Response:
        try:
            length = _length(await self._reader.readexactly(p.HEADER.size))
            body = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            self._writer.close()
            raise AgentConnectionError("the agent closed the connection") from exc
        except OSError as exc:
            self._writer.close()
            raise AgentConnectionError(f"lost the agent connection: {exc}") from exc
        return _decode(body)

    async def request(self, request: p.Request) -> p.Response:
        async with self._lock:
            try:
                self._writer.write(p.encode_frame(request))
                await self._writer.drain()
            except OSError as exc:
                self._writer.close()
                raise AgentConnectionError(f"lost the agent connection: {exc}") from exc
            # A cancelled wait here would leave a reply in flight and desynchronise every later
            # exchange; so a cancellation mid-exchange poisons the connection instead.
            try:
                return await self._receive()
            except asyncio.CancelledError:
                self._writer.close()
                raise

    async def call(self, request: p.Request, expect: type[R]) -> R:
        return _check(await self.request(request), expect)

    async def watch(self) -> AsyncIterator[p.StateEvent]:
        """Subscribe to state changes; yields events until the agent goes away."""
        async with self._lock:
            self._writer.write(p.encode_frame(p.Watch()))
            await self._writer.drain()
            while True:
                try:
                    event = await self._receive()
                except AgentConnectionError:
                    return
                yield _check(event, p.StateEvent)

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AsyncAgentConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
