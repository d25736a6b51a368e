"""The agent's I/O bundle, injected into the core so that it can be tested with fakes where the
real part cannot produce a case (and a memory key store for the benchmark)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nomyo_agent import protocol as p
from nomyo_agent._pins import PinStore
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import PinentryError

if TYPE_CHECKING:
    from nomyo_agent._config import Config
    from nomyo_agent._keystore import KeyStore

__all__ = ["AskConfirm", "AskPassphrase", "Services"]

AskPassphrase = Callable[..., Awaitable[SecretBuffer]]
"""``_pinentry.get_passphrase`` with the program bound: (where, *, title, description, prompt,
error, confirm) -> SecretBuffer."""

AskConfirm = Callable[..., Awaitable[bool]]
"""``_pinentry.confirm`` with the program bound: (where, *, title, description, ok, cancel,
timeout) -> bool."""


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

    @property
    def identity_file(self) -> Path:
        return self.config.state_dir / "identity.json"
