"""Unlocking and replacing the identity: the operations that wait on a person or the keyring.

Rules:

- They hold one lock (``Custody.lock``), so that two unlocks, or an unlock and a keygen, never
  interleave; a failed unlock's growing delay (``unlock_delay``) is served under it, so parallel
  guesses queue up behind it.
- Keyring calls, PBKDF2 and the key-generation child run in a thread: the event loop keeps
  serving seal and open for the other clients meanwhile.
- A passphrase from pinentry lives in a ``SecretBuffer``; one from the wire is wiped by the
  dispatcher once the request is done.
- pinentry is asked up to ``MAX_ATTEMPTS`` times within one request, as gpg-agent does.
- Unlocking is here; a new identity (keygen, import) is ``_new_identity``'s, behind
  ``Custody.generate`` and ``Custody.import_key``, under the same lock and the same prompt.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, ClassVar

from nomyo_agent import _identity, _new_identity
from nomyo_agent import protocol as p
from nomyo_agent._secret import SecretBuffer
from nomyo_agent._sessionbus import keyring_call
from nomyo_agent.errors import (
    BadPassphraseError,
    CorruptIdentityError,
    NoIdentityError,
    PassphraseRequiredError,
    PinentryError,
)

if TYPE_CHECKING:
    from nomyo_agent._services import Services
    from nomyo_agent._state import AgentState

__all__ = ["MAX_ATTEMPTS", "Custody", "unlock_delay"]

MAX_ATTEMPTS = 3


def unlock_delay(failures: int) -> float:
    """Seconds to wait before answering the ``failures``-th consecutive failed unlock."""
    return 0.0 if failures <= 0 else min(0.25 * 2 ** (failures - 1), 16.0)


class Custody:
    # Read by _new_identity too (its Custody protocol), which does not import this module.
    max_attempts: ClassVar[int] = MAX_ATTEMPTS

    def __init__(self, state: AgentState, services: Services) -> None:
        self.state = state
        self.services = services
        self.lock = asyncio.Lock()

    def may_auto_unlock(self) -> bool:
        state, info = self.state, self.state.info
        return (
            state.key is None
            and info is not None
            and not info.passphrase_protected
            and not state.user_locked
            and self.services.config.auto_unlock
        )

    def identity_reply(self) -> p.IdentityReply:
        info = self.state.info
        if info is None:
            raise NoIdentityError("the agent has no identity yet")
        return p.IdentityReply(
            public_key_pem=info.public_key_pem,
            fingerprint=info.fingerprint,
            bits=info.bits,
            passphrase_protected=info.passphrase_protected,
        )

    # --- passphrases -----------------------------------------------------------------------

    async def ask(
        self, where: p.PinEntry, *, confirm: bool, error: str | None, **text: object
    ) -> SecretBuffer:
        # On X11/Wayland desktops a pinentry needs the asker's terminal or display; with neither
        # it would fail in a way that looks like a cancel. (pinentry-mac needs neither.)
        if (
            sys.platform.startswith("linux")
            and not where.ttyname
            and not (where.env.get("DISPLAY") or where.env.get("WAYLAND_DISPLAY"))
        ):
            raise PinentryError(
                "no terminal or display to ask for the passphrase on",
                hint="run it in a terminal, or pass the passphrase with --passphrase-stdin",
            )
        return await self.services.ask_passphrase(where, confirm=confirm, error=error, **text)

    async def _load(self, where: p.PinEntry | None) -> SecretBuffer | None:
        keystore = self.services.keystore
        return await keyring_call(keystore, where, keystore.load)

    async def auto_unlock(self, where: p.PinEntry | None = None) -> None:
        """Load an identity that has no passphrase: nothing to ask, so nothing to wait for.
        ``where`` is the asker's, whose session bus may reach the keyring (``_sessionbus``)."""
        async with self.lock:
            if not self.may_auto_unlock():
                return  # unlocked meanwhile, or locked by the user: _now says which
            stored = await self._load(where)
            if stored is None:
                return  # _now answers "locked"; an explicit unlock explains what is missing
            try:
                key = await asyncio.to_thread(_identity.unlock, stored.view, None)
            finally:
                stored.close()
            self.state.set_unlocked(key, "auto_unlock")

    async def _failed(self) -> None:
        await self.services.sleep(unlock_delay(self.state.failed_unlock()))

    async def unlock(self, request: p.Unlock, asker: str | None = None) -> p.Response:
        """Unlock with the request's passphrase or through pinentry; ``asker`` names the app
        whose request caused the prompt (unlock on demand), for the prompt's text."""
        if self.state.info is None:
            raise NoIdentityError("there is no identity to unlock")
        async with self.lock:
            if self.state.key is not None:
                return p.Ok()
            stored = await self._load(request.pinentry)
            if stored is None:
                raise CorruptIdentityError(
                    "the keyring holds no nomyo-agent identity, though this agent had one",
                    hint="restore it with `nomyo-agent import PATH --force`, or `keygen --force`",
                )
            try:
                key = await self._unlock_stored(stored, request, asker)
            finally:
                stored.close()
            self.state.set_unlocked(key, "unlock")
            return p.Ok()

    async def _unlock_stored(
        self, stored: SecretBuffer, request: p.Unlock, asker: str | None = None
    ) -> _identity.UnlockedKey:
        view = stored.view
        if not _identity.is_passphrase_protected(view):
            return await asyncio.to_thread(_identity.unlock, view, None)
        if request.passphrase is not None:
            try:
                return await asyncio.to_thread(_identity.unlock, view, request.passphrase)
            except BadPassphraseError:
                await self._failed()
                raise
        if request.pinentry is None:
            raise PassphraseRequiredError("the identity is protected by a passphrase")
        info = self.state.info
        assert info is not None
        error = None
        why = f"{asker} asks to use it, and it is locked.\n" if asker else ""
        timeout = {"timeout": self.services.config.prompt_timeout} if asker else {}
        for _ in range(MAX_ATTEMPTS):
            secret = await self.ask(
                request.pinentry,
                confirm=False,
                error=error,
                title="nomyo-agent",
                description=(
                    "Unlock the nomyo-agent identity for end-to-end encrypted inference\n"
                    f"RSA-{info.bits} key {p.short_fingerprint(info.fingerprint)}\n{why}"
                ).strip(),
                prompt="Passphrase:",
                **timeout,
            )
            try:
                return await asyncio.to_thread(_identity.unlock, view, secret.view)
            except BadPassphraseError:
                await self._failed()
                error = "Bad passphrase, try again"
            finally:
                secret.close()
        raise BadPassphraseError(f"bad passphrase ({MAX_ATTEMPTS} attempts)")

    # --- new identities (``_new_identity``) -----------------------------------------------------

    async def generate(self, request: p.Generate) -> p.Response:
        return await _new_identity.generate(self, request)

    async def import_key(self, request: p.Import) -> p.Response:
        return await _new_identity.import_key(self, request)
