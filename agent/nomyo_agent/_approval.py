"""Per-app approval (``confirm = "first-use"`` or ``"every-use"``), as ``ssh-add -c`` and
gpg-agent's confirm do it: before an app uses the identity the user is asked through pinentry's
``CONFIRM`` on the app's own terminal or display.

Rules:

- An app is ``Peer.app`` (``_peer.app_of``: the executable, and for interpreters the script).
- ``first-use``: the answer holds until the next lock; ``every-use``: every seal or open asks.
  Only an answer is remembered: a prompt that times out (``prompt_timeout``) or cannot be shown
  denies this request and asks again next time.
- Requests of the same app while its prompt is open wait on that prompt; prompts of different
  apps come one after the other (one pinentry at a time on a person's screen).
- Every lock forgets every decision (``AgentState.on_lock``); an answer given to a prompt
  that was open across a lock is not kept.
- A denied request gets ``AppDeniedError`` and nothing is sealed or opened.

- Proxy tokens count as apps: a seal or open that names the app it serves (``Seal.app``, what
  nomyo-proxy sends for a token) is the app ``"<peer's app>: <name>"``. The name is the peer's
  word, but it is only ever appended to the peer's own app, so a process can split itself into
  more apps to be asked about, never pass for another one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal

from nomyo_agent import protocol as p
from nomyo_agent._state import app_label
from nomyo_agent.errors import AppDeniedError, PinentryCancelledError, PinentryError

if TYPE_CHECKING:
    from nomyo_agent._services import Services
    from nomyo_agent._state import AgentState, Peer

__all__ = ["Approvals"]

MAX_APPS = 256  # apps remembered since unlock; the oldest is forgotten past it

Decision = Literal["allowed", "denied", "pending", "not-asked"]


@dataclasses.dataclass
class _App:
    decision: Decision = "not-asked"
    last_seen: float = 0.0
    uses: int = 0


class Approvals:
    def __init__(self, state: AgentState, services: Services) -> None:
        self.state = state
        self.services = services
        self.apps: OrderedDict[str, _App] = OrderedDict()
        self._prompts: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._screen = asyncio.Lock()  # one prompt at a time
        self._epoch = 0  # bumped by every lock
        state.on_lock.append(self.clear)

    @property
    def policy(self) -> str:
        return self.services.config.confirm

    def settled(self, peer: Peer, app: str = "") -> bool:
        """Whether a request of ``peer`` (for ``app``) can be served without asking (hot path)."""
        if self.policy == "off":
            return True
        record = self.apps.get(_name(peer, app))
        return self.policy == "first-use" and record is not None and record.decision == "allowed"

    def seen(self, peer: Peer, app: str = "", *, served: bool) -> None:
        """Remember that ``peer``'s app used (``served``) or tried to use the identity."""
        name = _name(peer, app)
        record = self.apps.pop(name, None) or _App()
        self.apps[name] = record  # most recent last
        record.last_seen = self.state.clock.wall()
        record.uses += served
        while len(self.apps) > MAX_APPS:
            self.apps.popitem(last=False)

    async def check(self, peer: Peer, app: str = "") -> None:
        """Return when ``peer``'s app may use the identity now; else raise ``AppDeniedError``."""
        if self.settled(peer, app):
            return
        name = _name(peer, app)
        self.seen(peer, app, served=False)
        record = self.apps[name]
        if self.policy == "first-use" and record.decision == "denied":
            raise AppDeniedError(f"{name} was denied the identity until the next lock")
        prompt = self._prompts.get(name)
        if prompt is None or prompt.done():
            prompt = asyncio.ensure_future(self._ask(name, peer, self._epoch))
            prompt.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._prompts[name] = prompt
        allowed, why = await asyncio.shield(prompt)
        if not allowed:
            raise AppDeniedError(f"{name} was not allowed to use the identity: {why}")

    async def _ask(self, name: str, peer: Peer, epoch: int) -> tuple[bool, str]:
        record = self.apps.get(name)
        if record is not None:
            record.decision = "pending"
        try:
            async with self._screen:
                allowed, why = await self._prompt(name, peer)
        finally:
            self._prompts.pop(name, None)
        record = self.apps.get(name)
        if record is not None and epoch == self._epoch:
            if why == "denied by the user" or allowed:
                record.decision = "allowed" if allowed else "denied"
            else:
                record.decision = "not-asked"  # no answer: ask again next time
        return allowed, why

    async def _prompt(self, name: str, peer: Peer) -> tuple[bool, str]:
        if peer.where is None:
            return False, "it named no terminal or display to ask on"
        config = self.services.config
        until = "until the next lock" if self.policy == "first-use" else "this once"
        try:
            allowed = await self.services.confirm(
                peer.where,
                title="nomyo-agent",
                description=f"Allow {name} to use your NOMYO identity {until}?",
                ok="_Allow",  # the underscore: Alt+A in graphical pinentries, "a" in -tty
                cancel="_Deny",
                timeout=config.prompt_timeout,
            )
        except PinentryCancelledError:
            allowed = False
        except PinentryError as exc:
            return False, f"no answer ({exc.message})"
        return allowed, ("allowed" if allowed else "denied by the user")

    def forget(self, name: str) -> bool:
        return self.apps.pop(name, None) is not None

    def clear(self) -> None:
        self.apps.clear()
        self._epoch += 1

    def reply(self) -> p.AppsReply:
        return p.AppsReply(
            apps=[
                p.AppInfo(app=name, decision=r.decision, last_seen=r.last_seen, uses=r.uses)
                for name, r in reversed(self.apps.items())
            ],
            confirm=self.policy,
        )


def _name(peer: Peer, app: str = "") -> str:
    base = peer.app or peer.exe
    label = app_label(app)
    return f"{base}: {label}" if label else base
