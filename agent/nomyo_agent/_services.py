"""The agent's I/O bundle, injected into the core so that the core stays pure: it decides, and
what reads or writes a file, probes the process or prompts a person is here.

Rules: nothing here that may block runs on the event loop. Pins (``pins.json``, written with an
fsync under an flock), the identity file and the hardening probe go through ``offload``, which
runs them on a thread (``asyncio.to_thread``); the in-process harness (``tests/support/core.py``)
passes one that runs them in place. Only ``PinStore.known`` (one stat, the seal's hot path) is
called directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from nomyo_agent import protocol as p
from nomyo_agent._pins import PinStore
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import PinentryError

if TYPE_CHECKING:
    from nomyo_agent._config import Config
    from nomyo_agent._identity import IdentityInfo
    from nomyo_agent._keystore import KeyStore

__all__ = ["AskConfirm", "AskPassphrase", "Offload", "Services"]

T = TypeVar("T")

AskPassphrase = Callable[..., Awaitable[SecretBuffer]]
"""``_pinentry.get_passphrase`` with the program bound: (where, *, title, description, prompt,
error, confirm) -> SecretBuffer."""

AskConfirm = Callable[..., Awaitable[bool]]
"""``_pinentry.confirm`` with the program bound: (where, *, title, description, ok, cancel,
timeout) -> bool."""


class Offload(Protocol):
    """Run a blocking call away from the event loop and await its result."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


async def _no_confirm(*args: object, **kwargs: object) -> bool:
    raise PinentryError("no confirmation prompt is configured")


@dataclasses.dataclass
class Services:
    """The agent's I/O, injected so that the core can be tested with fakes where needed."""

    config: Config
    keystore: KeyStore
    pins: PinStore
    socket_path: str
    ask_passphrase: AskPassphrase
    hardening: Callable[[tuple[SecretBuffer, ...]], p.Hardening]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    session_report: Callable[[], list[str]] = list  # _session.SessionWatch.report
    confirm: AskConfirm = _no_confirm
    offload: Offload = asyncio.to_thread

    @property
    def identity_file(self) -> Path:
        return self.config.state_dir / "identity.json"

    async def pin_check(self, origin: str, fingerprint: str, now: float) -> str:
        return await self.offload(functools.partial(self.pins.check, origin, fingerprint, now))

    async def pin_accept(self, origin: str, fingerprint: str | None, now: float) -> str:
        return await self.offload(functools.partial(self.pins.accept, origin, fingerprint, now))

    async def pin_forget(self, origin: str) -> None:
        await self.offload(functools.partial(self.pins.forget, origin))

    async def pins_list(self) -> list[p.PinInfo]:
        return await self.offload(self.pins.list)

    async def hardening_report(self) -> p.Hardening:
        return await self.offload(functools.partial(self.hardening, ()))

    async def save_identity(self, info: IdentityInfo) -> None:
        await self.offload(functools.partial(info.save, self.identity_file))
