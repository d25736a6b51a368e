"""What the client's unit tests talk to on the agent side: the real agent behind a real socket,
and two purpose-named faults (the router side is ``support.scripted_router``).

- ``live_agent`` (fixture): the agent's real core (``support.core.Core``: ``Dispatcher`` over
  ``AgentState``, a memory key store, a 2048-bit identity from ``support.keys``) served by the
  agent's real ``AgentServer`` on a Unix socket in the test's folder, on its own thread and
  event loop. There is one implementation of the agent's behaviour: the tests read what it did
  from its own counters, pins and identity. ``empty_agent`` is the same with no identity.
- ``OtherVersionAgent``: a socket that answers ``Hello`` as an agent of another protocol
  version, and ``Stop`` by going away. The real agent cannot be made to speak another version.
- ``CuttingRelay``: a relay in front of the live agent that, when armed, passes a request on and
  cuts the connection halfway through the reply. The real agent never does that on its own.

Registered in ``tests/conftest.py``, so the fixtures are there for every test module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization

from nomyo_agent import protocol as p
from nomyo_agent._keystore import MemoryStore
from nomyo_agent._secret import SecretBuffer
from nomyo_agent._server import AgentServer
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import KeyringLockedError
from support.keys import rsa_key

if TYPE_CHECKING:
    from support.core import Core  # the ``core`` fixture's; a plugin registered after this one

__all__ = ["CuttingRelay", "LiveAgent", "OtherVersionAgent", "key_file_pem"]

R = TypeVar("R", bound=p.Response)
T = TypeVar("T")


def key_file_pem(index: int, password: bytes | None = None) -> bytes:
    """A PKCS#8 PEM file as the public client leaves one (``client_keys/private_key.pem``)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return rsa_key(2048, index).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


# --- a loop on a thread, for servers the tests talk to -------------------------------------------


class _NoSignalsLoop(asyncio.SelectorEventLoop):
    """Signal handlers can only be set from the main thread: the server, told there are none
    (as on Windows), serves until asked to stop instead."""

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        raise NotImplementedError

    def remove_signal_handler(self, sig: int) -> bool:
        raise NotImplementedError


class _Thread:
    def __init__(self) -> None:
        self.loop = _NoSignalsLoop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# --- the agent -----------------------------------------------------------------------------------


@dataclass
class LiveAgent:
    """The real agent core served on ``path``; ask it things with ``call``, as a client would."""

    core: Core
    path: str

    def call(self, request: p.Request, expect: type[R]) -> R:
        """One request on a connection of its own (agent errors are raised as agent errors)."""
        with AgentConnection.open(self.path, timeout=10) as conn:
            return conn.call(request, expect)

    @property
    def counters(self) -> p.Counters:
        return self.core.state.counters.snapshot()

    def fingerprint(self) -> str | None:
        info = self.core.state.info
        return None if info is None else info.fingerprint

    def pinned(self) -> dict[str, str]:
        return {pin.origin: pin.fingerprint for pin in self.call(p.PinsList(), p.PinsReply).pins}

    def pin_policy(self, policy: str) -> None:
        services = self.core.services
        services.config = dataclasses.replace(services.config, pin_policy=policy)

    def lock(self) -> None:
        """What `nomyo-agent lock` does: no auto-unlock until the user unlocks."""
        self.call(p.Lock(), p.Ok)

    def keyring_locked(self) -> None:
        """The login keyring gets locked (the next unlock cannot read the key)."""
        self.core.services.keystore = _LockedKeyring()


class _LockedKeyring(MemoryStore):
    def load(self) -> SecretBuffer | None:
        raise KeyringLockedError("the login keyring is locked")


def _serve(core: Core) -> Iterator[LiveAgent]:
    thread = _Thread()
    ready = threading.Event()
    server = AgentServer(
        core.dispatcher, core.state, path=core.services.socket_path, on_ready=ready.set
    )
    running = asyncio.run_coroutine_threadsafe(server.run(), thread.loop)
    try:
        if not ready.wait(30):
            running.result(timeout=1)  # why it did not start
            pytest.fail("the agent did not start serving")
        yield LiveAgent(core=core, path=core.services.socket_path)
    finally:
        thread.loop.call_soon_threadsafe(server.request_stop)
        running.result(timeout=30)
        thread.close()


@pytest.fixture
def live_agent(core: Core) -> Iterator[LiveAgent]:
    """The real agent with a 2048-bit identity (locked, no passphrase: the first seal unlocks)."""
    core.install_identity()
    yield from _serve(core)


@pytest.fixture
def empty_agent(core: Core) -> Iterator[LiveAgent]:
    """The real agent with no identity yet."""
    yield from _serve(core)


# --- faults the real agent cannot be made to produce ------------------------------------------


@dataclass
class OtherVersionAgent:
    """An agent of another protocol version (``autostarted``: one a client started, which it may
    stop and replace). It answers ``Hello`` and ``Stop`` only, and notes what it was sent."""

    path: str
    autostarted: bool = False
    ops: list[str] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = p.FrameReader()
        try:
            while data := await reader.read(65536):
                for body in frames.feed(data):
                    request = p.decode_request(body)
                    self.ops.append(type(request).__name__)
                    if isinstance(request, p.Hello):
                        reply: p.Response = p.HelloReply(
                            protocol=p.PROTOCOL_VERSION + 1, agent_version="0.0.1",
                            capabilities=[], pid=1, autostarted=self.autostarted,
                        )  # fmt: skip
                    elif isinstance(request, p.Stop):
                        reply = p.Ok()
                    else:
                        reply = p.Error(code=p.ErrorCode.UNSUPPORTED_PROTOCOL, message="old")
                    writer.write(p.encode_frame(reply))
                    await writer.drain()
                    if isinstance(request, p.Stop) and self._server is not None:
                        self._server.close()  # as an agent does: its socket goes away
                        Path(self.path).unlink(missing_ok=True)
                        return
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)


@pytest.fixture
def other_version_agent(tmp_path: Path) -> Iterator[OtherVersionAgent]:
    agent = OtherVersionAgent(path=str(tmp_path / "agent.sock"))
    thread = _Thread()
    thread.run(agent.start())
    yield agent

    async def stop() -> None:
        if agent._server is not None:
            agent._server.close()

    thread.run(stop())
    thread.close()


@dataclass
class CuttingRelay:
    """A relay at ``path`` in front of the live agent. ``cut_next`` replies are cut halfway: the
    agent did the work, the client got half a frame and then the end of the connection."""

    path: str
    agent: LiveAgent
    cut_next: int = 0
    connections: int = 0

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_unix_connection(self.agent.path)
        frames = p.FrameReader()
        try:
            while data := await reader.read(65536):
                up_writer.write(data)
                for _ in frames.feed(data):
                    header = await up_reader.readexactly(4)
                    reply = header + await up_reader.readexactly(int.from_bytes(header, "big"))
                    if self.cut_next:
                        self.cut_next -= 1
                        writer.write(reply[: len(reply) // 2])
                        await writer.drain()
                        return
                    writer.write(reply)
                    await writer.drain()
        finally:
            up_writer.close()
            writer.close()

    async def start(self) -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(self._relay, self.path)


@pytest.fixture
def cutting_relay(live_agent: LiveAgent, tmp_path: Path) -> Iterator[CuttingRelay]:
    relay = CuttingRelay(path=str(tmp_path / "relay.sock"), agent=live_agent)
    thread = _Thread()
    server = thread.run(relay.start())
    yield relay

    async def stop() -> None:
        server.close()

    thread.run(stop())
    thread.close()
