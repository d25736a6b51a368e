"""Seal and open: their checks on the event loop, and the work those checks allow.

Rules:

- The lock check comes first (``key``): a locked agent parses nothing of the request.
- The router key's pin is checked on the hot path only when it is known already (one stat);
  a new or changed key must write ``pins.json``, so ``begin`` raises ``MustWait`` and the
  dispatcher awaits ``pin`` (``Services``, off the event loop) before beginning again.
- ``Work.run`` is the cryptography alone: it holds its own reference to the key and reads no
  agent state, so it may run on a worker thread; ``used`` then counts it on the event loop.
- Router keys are parsed once and kept (``ROUTER_KEY_CACHE``, most recent).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

from nomyo_agent import _envelope, _identity, _keys
from nomyo_agent import protocol as p
from nomyo_agent.errors import LockedError, NoIdentityError, PinMismatchError
from nomyo_agent.origins import canonical_origin

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from nomyo_agent._approval import Approvals
    from nomyo_agent._services import Services
    from nomyo_agent._state import AgentState, Peer

__all__ = ["INLINE_MAX_BYTES", "ROUTER_KEY_CACHE", "KeyUse", "MustWait", "Work", "attempt"]

# A seal's or open's payload over this is never sealed or opened on the event loop (_workers).
INLINE_MAX_BYTES = 256 * 1024
ROUTER_KEY_CACHE = 32


@dataclasses.dataclass(frozen=True)
class Work:
    """The cryptography of one seal or open, after its checks passed: ``run`` reads no agent
    state (it holds its own reference to the key), so it may run on any thread."""

    run: Callable[[], p.Response]
    kind: Literal["seal", "open"]
    peer: Peer
    app: str
    size: int  # payload bytes: the server runs a large one off the event loop

    @property
    def large(self) -> bool:
        """Never sealed or opened on the event loop (over ``INLINE_MAX_BYTES``)."""
        return self.size > INLINE_MAX_BYTES


def attempt(run: Callable[[], p.Response]) -> p.Response | Exception:
    """``run()``, or the exception it raised: what a worker thread hands back."""
    try:
        return run()
    except Exception as exc:
        return exc


class MustWait(Exception):
    """A seal whose pin is not known yet: writing it is file I/O, off the hot path."""


class KeyUse:
    def __init__(self, state: AgentState, services: Services, approvals: Approvals) -> None:
        self.state = state
        self.services = services
        self.approvals = approvals
        self._router_keys: OrderedDict[str, tuple[rsa.RSAPublicKey, str]] = OrderedDict()

    def key(self) -> _identity.UnlockedKey:
        key = self.state.key
        if key is not None:
            return key
        if self.state.info is None:
            raise NoIdentityError("the agent has no identity yet")
        raise LockedError("the agent is locked")

    def router_key(self, pem: str) -> tuple[rsa.RSAPublicKey, str]:
        cached = self._router_keys.get(pem)
        if cached is None:
            key = _keys.load_router_key(pem)
            cached = (key, _keys.fingerprint(key))
            self._router_keys[pem] = cached
            if len(self._router_keys) > ROUTER_KEY_CACHE:
                self._router_keys.popitem(last=False)
        return cached

    def begin(self, request: p.Seal | p.Open, peer: Peer, pinned: str | None = None) -> Work:
        """The checks of a seal or open (the lock check first), and the work they allow."""
        if isinstance(request, p.Seal):
            return self._begin_seal(request, peer, pinned)
        private_key = self.key().private_key  # a lock meanwhile drops the agent's reference
        package = request.package

        def open_it() -> p.Response:
            opened = _envelope.open_package(private_key, package)
            # A large payload comes as a bytearray (decrypted into place, never joined): msgspec
            # encodes it as it does bytes, and does not check types on construction.
            plaintext = cast(bytes, opened.plaintext)
            return p.OpenReply(plaintext=plaintext, processed_at=opened.processed_at)

        return Work(open_it, "open", peer, request.app, len(package))

    def used(self, work: Work) -> None:
        if work.kind == "seal":
            self.state.counters.seals += 1
        else:
            self.state.counters.opens += 1
        self.state.touch(work.peer, work.app)
        self.approvals.seen(work.peer, work.app, served=True)

    def _router(self, request: p.Seal) -> tuple[str, rsa.RSAPublicKey, str]:
        """A seal's origin, router key and its fingerprint, after the lock check."""
        self.key()
        origin = canonical_origin(request.origin)
        return (origin, *self.router_key(request.router_key_pem))

    async def pin(self, request: p.Seal) -> str:
        """Check the router key against its origin's pin, pinning it if new (a file write,
        off the event loop); a changed key is refused and told to watchers."""
        if self.services.config.pin_policy != "tofu":
            return "off"
        origin, _, fp = self._router(request)
        try:
            return await self.services.pin_check(origin, fp, self.state.clock.wall())
        except PinMismatchError as exc:
            self.state.emit("pin_mismatch", origin, exc.fingerprint)
            raise

    def _begin_seal(self, request: p.Seal, peer: Peer, pinned: str | None) -> Work:
        origin, router_key, fp = self._router(request)
        info = self.state.info
        assert info is not None  # an unlocked agent always has one
        if pinned is None:  # the hot path: a pin already known, or none kept
            if self.services.config.pin_policy != "tofu":
                pinned = "off"
            elif self.services.pins.known(origin, fp):
                pinned = "known"
            else:
                raise MustWait
        plaintext = request.plaintext

        def seal_it() -> p.Response:
            return p.SealReply(
                package=cast(bytes, _envelope.seal(router_key, plaintext)),  # as in open_it
                public_key_pem=info.public_key_pem,
                fingerprint=info.fingerprint,
                pinned=pinned,  # type: ignore[arg-type]
            )

        return Work(seal_it, "seal", peer, request.app, len(plaintext))
