"""The agent's core: one request and its peer in, one response out.

Rules (openssh's ``ssh-agent.c`` hygiene):

- Every ``AgentError`` becomes an ``Error`` reply; anything unexpected becomes ``internal`` and
  is logged, never raised: one client's bad request never hurts the others.
- The lock check comes first for every operation that needs the key.
- Cheap requests are answered synchronously by ``call_now`` (the server's hot path). Seal and
  open come in two halves (``start_now``): the checks, which read and write agent state, and a
  ``Work`` whose ``run`` is the cryptography alone and touches no state, so that the server may
  run it on a worker thread (the RSA and AES code releases the GIL) and hand the outcome back to
  ``record`` on the event loop. Unlock, keygen, import and an auto-unlock wait on a person or
  the keyring: ``Custody`` (``_custody.py``) does them.
- Passphrases and PEMs from the wire are wiped once the request is done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from nomyo_agent import __version__, _envelope, _identity, _keys
from nomyo_agent import protocol as p
from nomyo_agent._approval import Approvals
from nomyo_agent._custody import Custody
from nomyo_agent._demand import OnDemand
from nomyo_agent._secret import wipe
from nomyo_agent._services import AskPassphrase, Services
from nomyo_agent.errors import (
    AgentError,
    BadRequestError,
    InternalError,
    LockedError,
    NoIdentityError,
    PinMismatchError,
)
from nomyo_agent.origins import canonical_origin

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from nomyo_agent._state import AgentState, Peer

__all__ = ["AskPassphrase", "Dispatcher", "Services", "Work", "attempt"]

log = logging.getLogger("nomyo_agent")

_SLOW = (p.Unlock, p.Generate, p.Import)  # may wait on pinentry, the keyring or a child process
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


def attempt(run: Callable[[], p.Response]) -> p.Response | Exception:
    """``run()``, or the exception it raised: what a worker thread hands back."""
    try:
        return run()
    except Exception as exc:
        return exc


class Dispatcher:
    def __init__(self, state: AgentState, services: Services) -> None:
        self.state = state
        self.services = services
        self.custody = Custody(state, services)
        self.on_demand = OnDemand(self.custody)
        self.approvals = Approvals(state, services)
        self._router_keys: OrderedDict[str, tuple[rsa.RSAPublicKey, str]] = OrderedDict()

    def immediate(self, request: p.Request, peer: Peer | None = None) -> bool:
        """Whether ``call_now`` can answer it: everything but unlock, generate and import, and a
        seal or open that must first auto-unlock an identity with no passphrase or ask for the
        identity on demand (``_demand.py``), or ask the user whether ``peer``'s app may use it
        (``_approval.py``)."""
        if isinstance(request, _SLOW):
            return False
        if not isinstance(request, (p.Seal, p.Open)):
            return True
        if self.custody.may_auto_unlock() or self.on_demand.wanted():
            return False
        if peer is None:
            return self.approvals.policy == "off"
        return self.approvals.settled(peer, request.app)

    def call_now(self, request: p.Request, peer: Peer) -> p.Response:
        """Answer a request that needs no waiting, synchronously: the server's hot path."""
        started = self.start_now(request, peer)
        if isinstance(started, Work):
            return self.record(started, attempt(started.run))
        return started

    def start_now(self, request: p.Request, peer: Peer) -> p.Response | Work:
        """``call_now``'s first half: the reply, or for a seal or open whose checks passed the
        ``Work`` to run (here or on a worker thread), then to pass to ``record``."""
        self.state.counters.requests += 1
        try:
            if isinstance(request, (p.Seal, p.Open)):
                return self._begin(request, peer)
            return self._now(request, peer)
        except AgentError as exc:
            self.state.counters.errors += 1
            return exc.to_reply()
        except Exception:
            return self._internal(request)

    def record(self, work: Work, outcome: p.Response | Exception) -> p.Response:
        """``call_now``'s second half, on the event loop: count the use, or turn the failure
        into its reply."""
        if isinstance(outcome, AgentError):
            self.state.counters.errors += 1
            return outcome.to_reply()
        if isinstance(outcome, Exception):
            self.state.counters.errors += 1
            log.error("internal error while serving %s", work.kind, exc_info=outcome)
            return InternalError("the agent failed on this request; see its log").to_reply()
        self._used(work)
        return outcome

    async def __call__(self, request: p.Request, peer: Peer) -> p.Response:
        if self.immediate(request, peer):
            return self.call_now(request, peer)
        self.state.counters.requests += 1
        try:
            if isinstance(request, (p.Seal, p.Open)):
                await self.custody.auto_unlock(peer.where)
                await self.on_demand.unlock_for(peer)
                if self.state.key is not None:  # locked: _begin says so, no question asked
                    await self.approvals.check(peer, request.app)
                work = self._begin(request, peer)
                reply = work.run()
                self._used(work)
                return reply
            return await self._slow(request)
        except AgentError as exc:
            self.state.counters.errors += 1
            return exc.to_reply()
        except Exception:
            return self._internal(request)

    def _internal(self, request: p.Request) -> p.Response:
        self.state.counters.errors += 1
        log.exception("internal error while serving %s", type(request).__name__)
        return InternalError("the agent failed on this request; see its log").to_reply()

    async def _slow(self, request: p.Request) -> p.Response:
        match request:
            case p.Unlock():
                try:
                    return await self.custody.unlock(request)
                finally:
                    _wipe_opt(request.passphrase)
            case p.Generate():
                try:
                    return await self.custody.generate(request)
                finally:
                    _wipe_opt(request.passphrase)
            case p.Import():
                try:
                    return await self.custody.import_key(request)
                finally:
                    _wipe_opt(request.passphrase)
                    _wipe_opt(request.file_password)
                    _wipe_opt(request.pem)  # an unencrypted PEM is the private key itself
        raise InternalError(f"unhandled request {type(request).__name__}")  # pragma: no cover

    def _now(self, request: p.Request, peer: Peer) -> p.Response:
        state = self.state
        match request:
            case p.Hello():
                # Always answer with our own version, even to another one: the client decides,
                # and only the reply tells it whether it may restart an agent it auto-started.
                return p.HelloReply(
                    protocol=p.PROTOCOL_VERSION,
                    agent_version=__version__,
                    capabilities=list(p.CAPABILITIES),
                    pid=os.getpid(),
                    autostarted=state.autostarted,
                )
            case p.Status():
                return self._status()
            case p.PublicKey():
                return self.custody.identity_reply()
            case p.Lock():
                state.lock("lock")
                state.user_locked = True
                return p.Ok()
            case p.PinsList():
                return p.PinsReply(
                    pins=self.services.pins.list(), policy=self.services.config.pin_policy
                )
            case p.PinAccept():
                origin = canonical_origin(request.origin)
                fp = None
                if request.router_key_pem is not None:
                    fp = self._router_key(request.router_key_pem)[1]
                pinned = self.services.pins.accept(origin, fp, state.clock.wall())
                return p.Accepted(origin=origin, fingerprint=pinned)
            case p.PinForget():
                self.services.pins.forget(canonical_origin(request.origin))
                return p.Ok()
            case p.Apps():
                return self.approvals.reply()
            case p.AppForget():
                if not self.approvals.forget(request.app):
                    raise BadRequestError(
                        f"no app {request.app!r} was seen since unlock",
                        hint="`nomyo-agent apps` lists them, as they must be written",
                    )
                return p.Ok()
            case p.Stop():
                return p.Ok()  # the server stops after sending this
            case p.Watch():  # pragma: no cover - the server handles watch before dispatch
                return state.event("watch")
        raise InternalError(f"unhandled request {type(request).__name__}")  # pragma: no cover

    # --- keys ----------------------------------------------------------------------------------

    def _key(self) -> _identity.UnlockedKey:
        key = self.state.key
        if key is not None:
            return key
        if self.state.info is None:
            raise NoIdentityError("the agent has no identity yet")
        raise LockedError("the agent is locked")

    def _router_key(self, pem: str) -> tuple[rsa.RSAPublicKey, str]:
        cached = self._router_keys.get(pem)
        if cached is None:
            key = _keys.load_router_key(pem)
            cached = (key, _keys.fingerprint(key))
            self._router_keys[pem] = cached
            if len(self._router_keys) > ROUTER_KEY_CACHE:
                self._router_keys.popitem(last=False)
        return cached

    def _begin(self, request: p.Seal | p.Open, peer: Peer) -> Work:
        """The checks of a seal or open (the lock check first), and the work they allow."""
        if isinstance(request, p.Seal):
            return self._begin_seal(request, peer)
        private_key = self._key().private_key  # a lock meanwhile drops the agent's reference
        package = request.package

        def open_it() -> p.Response:
            opened = _envelope.open_package(private_key, package)
            return p.OpenReply(plaintext=opened.plaintext, processed_at=opened.processed_at)

        return Work(open_it, "open", peer, request.app, len(package))

    def _used(self, work: Work) -> None:
        if work.kind == "seal":
            self.state.counters.seals += 1
        else:
            self.state.counters.opens += 1
        self.state.touch(work.peer, work.app)
        self.approvals.seen(work.peer, work.app, served=True)

    def _begin_seal(self, request: p.Seal, peer: Peer) -> Work:
        self._key()
        info = self.state.info
        assert info is not None  # an unlocked agent always has one
        origin = canonical_origin(request.origin)
        router_key, fp = self._router_key(request.router_key_pem)
        pinned = "off"
        if self.services.config.pin_policy == "tofu":
            try:
                pinned = self.services.pins.check(origin, fp, self.state.clock.wall())
            except PinMismatchError as exc:
                self.state.emit("pin_mismatch", origin, exc.fingerprint)
                raise
        plaintext = request.plaintext

        def seal_it() -> p.Response:
            return p.SealReply(
                package=_envelope.seal(router_key, plaintext),
                public_key_pem=info.public_key_pem,
                fingerprint=info.fingerprint,
                pinned=pinned,  # type: ignore[arg-type]
            )

        return Work(seal_it, "seal", peer, request.app, len(plaintext))

    # --- status ----------------------------------------------------------------------------------

    def _status(self) -> p.StatusReply:
        state, services = self.state, self.services
        info = state.info
        idle_left, lifetime_left = state.time_left()
        return p.StatusReply(
            state=state.state,
            pid=os.getpid(),
            protocol=p.PROTOCOL_VERSION,
            agent_version=__version__,
            socket=services.socket_path,
            fingerprint=info.fingerprint if info else None,
            bits=info.bits if info else None,
            passphrase_protected=info.passphrase_protected if info else None,
            keyring_backend=services.keystore.backend_name,
            idle_timeout=state.idle_timeout,
            max_lifetime=state.max_lifetime,
            idle_left=idle_left,
            lifetime_left=lifetime_left,
            unlocked_at=state.unlocked_wall,
            pin_policy=services.config.pin_policy,
            hardening=services.hardening(()),
            counters=state.counters.snapshot(),
            served_since_unlock=state.served_since_unlock,
            recent_clients=list(reversed(state.recent.values())),
            uptime=state.clock.now() - state.started,
            locked_by=state.locked_by,
            session=services.session_report(),
        )


def _wipe_opt(secret: bytes | None) -> None:
    if secret:
        wipe(secret)
