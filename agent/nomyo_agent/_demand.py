"""Unlock on demand (``unlock_on_demand = true``, as gpg-agent does): a seal or open that finds
the identity locked asks for it through pinentry on the asking app's terminal or display, then
is answered.

Rules:

- One prompt at a time: requests that find the identity locked while a prompt is open wait on
  that prompt (``asyncio.shield``: one waiter going away does not close it for the others).
- The prompt shows on the display or terminal the app named in its ``Hello``
  (``Peer.where``); an app that named none is answered ``locked`` without a prompt.
- A prompt cancelled, timed out (``prompt_timeout``) or failed fails every waiting request with
  the ``locked`` error, whose message says why. Three wrong passphrases do too.
- An identity with no passphrase has nothing to type: the prompt is a ``CONFIRM`` ("Unlock"),
  so that an explicit ``lock`` still needs a person to undo it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nomyo_agent import protocol as p
from nomyo_agent.errors import (
    BadPassphraseError,
    LockedError,
    PinentryCancelledError,
    PinentryError,
)

if TYPE_CHECKING:
    from nomyo_agent._custody import Custody
    from nomyo_agent._state import Peer

__all__ = ["OnDemand"]

_REFUSED = (PinentryCancelledError, PinentryError, BadPassphraseError)


class OnDemand:
    def __init__(self, custody: Custody) -> None:
        self.custody = custody
        self._prompt: asyncio.Future[None] | None = None

    def wanted(self) -> bool:
        """Whether a seal or open now would prompt: on, an identity, and locked."""
        state = self.custody.state
        return (
            self.custody.services.config.unlock_on_demand
            and state.key is None
            and state.info is not None
        )

    async def unlock_for(self, peer: Peer) -> None:
        """Unlock for ``peer``'s request, or raise ``LockedError`` saying why not."""
        if not self.wanted() or peer.where is None:
            return  # the request is answered `locked` (or served, if unlocked meanwhile)
        prompt = self._prompt
        if prompt is None or prompt.done():
            prompt = self._prompt = asyncio.ensure_future(self._ask(peer))
            # Retrieve the outcome even if every waiter went away, so nothing is logged as lost.
            prompt.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.shield(prompt)
        except _REFUSED as exc:
            raise LockedError(
                f"the agent is locked: {exc.message}",
                hint="run `nomyo-agent unlock`, or answer the prompt the next request opens",
            ) from exc

    async def _ask(self, peer: Peer) -> None:
        custody, info = self.custody, self.custody.state.info
        assert info is not None
        assert peer.where is not None
        if info.passphrase_protected:
            await custody.unlock(p.Unlock(pinentry=peer.where), asker=peer.exe)
            return
        allowed = await custody.services.confirm(
            peer.where,
            title="nomyo-agent",
            description=(
                f"{peer.exe} asks to use the nomyo-agent identity, and it is locked.\n"
                f"RSA-{info.bits} key {p.short_fingerprint(info.fingerprint)}\n"
                "Unlock it?"
            ),
            ok="_Unlock",
            cancel="_Keep locked",
            timeout=custody.services.config.prompt_timeout,
        )
        if not allowed:
            raise PinentryCancelledError("the unlock was declined", hint="")
        await custody.unlock(p.Unlock())
