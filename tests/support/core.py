"""The agent's core in-process: a ``Dispatcher`` over a real ``AgentState``, a memory key store,
a pins file in a temporary folder, a fake clock and a scripted passphrase prompt.

No socket, no process, no keyring: what the dispatcher decides is tested in milliseconds here,
and the real parts around it are tested elsewhere. ``serving`` puts the same core behind a real
socket, served by the agent's own server in the test's event loop, for what only a socket shows
(two connections at once, watch, stop). The identity is installed the way keygen and import
leave it (the PKCS#8 PEM in the store, ``identity.json`` beside the pins), from a key made once
per test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from nomyo_agent._config import Config
from nomyo_agent._dispatch import Dispatcher
from nomyo_agent._identity import IdentityInfo
from nomyo_agent._keystore import MemoryStore
from nomyo_agent._pins import PinStore
from nomyo_agent._secret import SecretBuffer
from nomyo_agent._server import AgentServer
from nomyo_agent._services import Services
from nomyo_agent._state import AgentState, Peer
from nomyo_agent.errors import PinentryCancelledError
from support.fakes import FakeClock
from support.keys import rsa_key

__all__ = ["HARDENED", "PEER", "Core", "Gate", "Served", "core", "in_place", "serving"]

PEER = Peer(pid=4242, uid=1000, gid=1000, exe="app")
R = TypeVar("R", bound=p.Response)
T = TypeVar("T")
HARDENED = p.Hardening(
    not_dumpable=True,
    ptrace_denied=True,
    core_dumps_disabled=True,
    key_memory_locked=True,
    key_memory_dontdump=True,
    process_memory_locked=True,
)


async def in_place(fn: Callable[[], T]) -> T:
    """``Services.offload`` for the harness: the pins file and the identity file are written
    right here, on the test's own event loop (no thread, no waiting)."""
    return fn()


class Gate:
    """Holds the harness's prompts open, as a person who has not answered yet: ``shown`` is set
    once a prompt is up, and every prompt waits for ``released``. Make it on the test's loop."""

    def __init__(self) -> None:
        self.shown = asyncio.Event()
        self.released = asyncio.Event()


@dataclass
class Core:
    """One agent core. ``answers`` feeds the passphrase prompt (None: the user cancels);
    ``asked`` and ``slept`` record the prompts and the delays the core asked for."""

    folder: Path
    clock: FakeClock = field(default_factory=FakeClock)
    answers: list[bytes | None] = field(default_factory=list)
    asked: list[dict[str, Any]] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    events: list[p.StateEvent] = field(default_factory=list)
    gate: Gate | None = None  # when given: each prompt stays open until the gate is released

    def __post_init__(self) -> None:
        self.store = MemoryStore()
        self.config = Config(state_dir=self.folder, idle_timeout=60, max_lifetime=3600)
        self.state = AgentState(clock=self.clock, idle_timeout=60, max_lifetime=3600, info=None)
        self.state.watchers.add(self.events.append)
        self.services = Services(
            config=self.config,
            keystore=self.store,
            pins=PinStore(self.folder / "pins.json"),
            socket_path=str(self.folder / "agent.sock"),
            ask_passphrase=self._ask,
            hardening=lambda buffers: HARDENED,
            sleep=self._sleep,
            offload=in_place,
        )
        self.dispatcher = Dispatcher(self.state, self.services)

    async def _ask(self, where: p.PinEntry, **text: Any) -> SecretBuffer:
        self.asked.append(text)
        if self.gate is not None:
            self.gate.shown.set()
            await self.gate.released.wait()
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            raise PinentryCancelledError("cancelled")
        return SecretBuffer.from_bytes(answer)

    async def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    # --- an identity, as keygen or import leave it -------------------------------------------

    def install_identity(self, passphrase: bytes | None = None, bits: int = 2048) -> str:
        """Store a key (encrypted under ``passphrase`` if given) and its public facts; the
        agent stays locked. Returns the public key's fingerprint."""
        key = rsa_key(bits, 0)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        self.store.save(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              encryption)
        )  # fmt: skip
        public = key.public_key()
        info = IdentityInfo(
            public_key_pem=_keys.public_pem(public),
            fingerprint=_keys.fingerprint(public),
            bits=bits,
            passphrase_protected=passphrase is not None,
            created=time.time(),
        )
        info.save(self.services.identity_file)
        self.state.info = info
        return info.fingerprint

    # --- requests ------------------------------------------------------------------------------

    def ask(self, request: p.Request) -> p.Response:
        """The whole path the server takes: the request through the codec (the dispatcher wipes
        the passphrases and PEMs it was given, which must not be the test's own constants),
        then ``call_now`` when it may, else the awaited one."""
        decoded = p.decode_request(p.encode(request))
        return asyncio.run(self.dispatcher(decoded, PEER))

    def call(self, request: p.Request, expect: type[R]) -> R:
        reply = self.ask(request)
        assert isinstance(reply, expect), reply
        return reply

    def error(self, request: p.Request) -> p.Error:
        reply = self.ask(request)
        assert isinstance(reply, p.Error), reply
        return reply

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def watch(self, predicate: Callable[[p.StateEvent], bool]) -> list[p.StateEvent]:
        return [e for e in self.events if predicate(e)]


@dataclass
class Served:
    path: str  # the socket
    running: asyncio.Future[None]  # the server's run(): done once it has stopped


@contextlib.asynccontextmanager
async def serving(core: Core) -> AsyncIterator[Served]:
    """``core`` behind a real Unix socket: the agent's own server (``AgentServer``) on this
    event loop, in this process. Stops the server on the way out, if it has not stopped."""
    folder = tempfile.mkdtemp(prefix="nomyo-core-", dir="/tmp")  # short: sun_path is 108 bytes
    path = os.path.join(folder, "agent.sock")
    ready = asyncio.Event()
    server = AgentServer(core.dispatcher, core.state, path=path, on_ready=ready.set)
    running = asyncio.ensure_future(server.run())
    try:
        await asyncio.wait([running, asyncio.ensure_future(ready.wait())], timeout=10,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if running.done():
            running.result()  # it failed to start: say why
        assert ready.is_set(), "the in-process server did not start"
        yield Served(path, running)
    finally:
        server.request_stop()
        await asyncio.wait_for(running, 30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    state = Core(tmp_path)
    yield state
    state.state.lock("test over")
