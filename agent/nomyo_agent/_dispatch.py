"""The agent's core: one request and its peer in, one response out.

Rules (openssh's ``ssh-agent.c`` hygiene):

- What each request type asks of the server is written once, in ``KINDS``: whether it may
  wait (pinentry, the keyring, a child process, a file, an OS probe), whether it is a seal or
  open (checks here, cryptography maybe on a worker), which of its fields hold secrets, whether
  it turns the connection into a watch or stops the agent. ``tests/test_core_rules.py`` fails
  if a request type of ``protocol`` has no entry. The server asks this table and knows no
  request type.
- Every ``AgentError`` becomes an ``Error`` reply; anything unexpected becomes ``internal`` and
  is logged, never raised: one client's bad request never hurts the others.
- The lock check comes first for every operation that needs the key.
- ``start`` answers what needs no waiting synchronously (the server's hot path). A seal or open
  comes in two halves: the checks, which read and write agent state, and a ``Work`` whose
  ``run`` is the cryptography alone and touches no state, so that the server may run it on a
  worker thread (the RSA and AES code releases the GIL) and hand the outcome back to ``record``
  on the event loop. What must wait comes back as ``Later``, for the server to await in a task
  of its own: unlock, keygen and import (``Custody``, ``_custody.py``), a seal or open that
  must first auto-unlock, unlock on demand, ask the user or write a new pin, and every request
  that touches a file or probes the process (through ``Services``, off the event loop).
- Only ``AgentState``'s methods change the agent's state.
- The fields ``KINDS`` names as secret (passphrases, PEMs) are wiped once the request is done.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from nomyo_agent import __version__
from nomyo_agent import protocol as p
from nomyo_agent._approval import Approvals
from nomyo_agent._custody import Custody
from nomyo_agent._demand import OnDemand
from nomyo_agent._keyuse import KeyUse, MustWait, Work, attempt
from nomyo_agent._secret import wipe
from nomyo_agent._services import AskPassphrase, Services
from nomyo_agent.errors import (
    AgentError,
    BadRequestError,
    InternalError,
)
from nomyo_agent.origins import canonical_origin

if TYPE_CHECKING:
    from nomyo_agent._state import AgentState, Peer

__all__ = [
    "KINDS",
    "AskPassphrase",
    "Dispatcher",
    "Kind",
    "Later",
    "Services",
    "Work",
    "attempt",
    "kind_of",
    "kind_of_op",
    "peer_for",
]

log = logging.getLogger("nomyo_agent")


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a request type asks of the server, beside its answer."""

    slow: bool = False  # may wait: the server awaits it in a task, later frames queue behind it
    crypto: bool = False  # a seal or open: immediate unless it must first unlock, ask or pin
    secrets: tuple[str, ...] = ()  # fields wiped once it is answered (passphrases, key PEMs)
    watch: bool = False  # the connection becomes a stream of state events; never dispatched
    stop: bool = False  # the server stops once the reply is sent


_NOW = Kind()
_WAITS = Kind(slow=True)

KINDS: Mapping[type[p.Request], Kind] = MappingProxyType(
    {
        p.Hello: _NOW,
        p.Status: _WAITS,  # probes the process's hardening: /proc, a locked page
        p.PublicKey: _NOW,
        p.Seal: Kind(crypto=True),
        p.Open: Kind(crypto=True),
        p.Lock: _NOW,
        p.Unlock: Kind(slow=True, secrets=("passphrase",)),  # pinentry, the keyring, PBKDF2
        p.Generate: Kind(slow=True, secrets=("passphrase",)),  # a child process
        # An unencrypted PEM is the private key itself.
        p.Import: Kind(slow=True, secrets=("passphrase", "file_password", "pem")),
        p.PinsList: _WAITS,  # pins.json: read here, written with an fsync by the two below
        p.PinAccept: _WAITS,
        p.PinForget: _WAITS,
        p.Apps: _NOW,
        p.AppForget: _NOW,
        p.Watch: Kind(watch=True),
        p.Stop: Kind(stop=True),
    }
)
_KINDS_BY_OP = {t.__struct_config__.tag: kind for t, kind in KINDS.items()}


def kind_of(request: p.Request) -> Kind:
    return KINDS[type(request)]


def kind_of_op(op: str | None) -> Kind | None:
    """The kind of a frame not decoded yet, from its ``op`` (``protocol.op_of``)."""
    return _KINDS_BY_OP.get(op) if op is not None else None


def peer_for(request: p.Request, peer: Peer) -> Peer:
    """``peer`` as this request leaves it: a ``Hello`` names the terminal or display that the
    connection's prompts go to."""
    if isinstance(request, p.Hello) and request.pinentry is not None:
        return dataclasses.replace(peer, where=request.pinentry)
    return peer


@dataclasses.dataclass(frozen=True)
class Later:
    """A request that must wait: ``run()`` answers it, awaited in a task of its own."""

    run: Callable[[], Awaitable[p.Response]]


Step = p.Response | Work | Later


class Dispatcher:
    def __init__(self, state: AgentState, services: Services) -> None:
        self.state = state
        self.services = services
        self.custody = Custody(state, services)
        self.on_demand = OnDemand(self.custody)
        self.approvals = Approvals(state, services)
        self.keys = KeyUse(state, services, self.approvals)

    def start(self, request: p.Request, peer: Peer) -> Step:
        """What to do with ``request``: its reply now; a seal's or open's ``Work`` (run it here
        or on a worker, then pass the outcome to ``record``); or ``Later``, to await."""
        kind = KINDS[type(request)]
        self.state.counters.requests += 1
        if kind.slow or (kind.crypto and not self._settled(request, peer)):
            return Later(functools.partial(self._later, request, peer, kind))
        try:
            if isinstance(request, (p.Seal, p.Open)):
                return self.keys.begin(request, peer)
            return self._now(request, peer)
        except MustWait:
            return Later(functools.partial(self._later, request, peer, kind))
        except AgentError as exc:
            self.state.counters.errors += 1
            return exc.to_reply()
        except Exception:
            return self._internal(request)
        finally:
            if kind.secrets:  # none on the hot path: skip the call
                _wipe_secrets(request, kind)

    def record(self, work: Work, outcome: p.Response | Exception) -> p.Response:
        """A seal's or open's second half, on the event loop: count the use, or turn the
        failure into its reply."""
        if isinstance(outcome, AgentError):
            self.state.counters.errors += 1
            return outcome.to_reply()
        if isinstance(outcome, Exception):
            self.state.counters.errors += 1
            log.error("internal error while serving %s", work.kind, exc_info=outcome)
            return InternalError("the agent failed on this request; see its log").to_reply()
        self.keys.used(work)
        return outcome

    def call_now(self, request: p.Request, peer: Peer) -> p.Response:
        """``start`` and, for a seal or open, its work, right here: a request that needs no
        waiting answered synchronously (the benchmark's in-process path)."""
        step = self.start(request, peer)
        if isinstance(step, Later):
            raise InternalError(f"{type(request).__name__} must be awaited")
        if isinstance(step, Work):
            return self.record(step, attempt(step.run))
        return step

    async def __call__(self, request: p.Request, peer: Peer) -> p.Response:
        """The whole answer, whatever it waits on (the in-process harness's path)."""
        step = self.start(request, peer)
        if isinstance(step, Later):
            return await step.run()
        if isinstance(step, Work):
            return self.record(step, attempt(step.run))
        return step

    def _settled(self, request: p.Request, peer: Peer) -> bool:
        """Whether a seal or open can be answered without waiting: no identity with no
        passphrase to auto-unlock, no unlock on demand (``_demand.py``), and ``peer``'s app
        needs no asking (``_approval.py``). (A new pin is found out later: ``MustWait``.)"""
        assert isinstance(request, (p.Seal, p.Open))
        if self.custody.may_auto_unlock() or self.on_demand.wanted():
            return False
        return self.approvals.settled(peer, request.app)

    async def _later(self, request: p.Request, peer: Peer, kind: Kind) -> p.Response:
        try:
            if isinstance(request, (p.Seal, p.Open)):
                return await self._served(request, peer)
            return await self._slow(request)
        except AgentError as exc:
            self.state.counters.errors += 1
            return exc.to_reply()
        except Exception:
            return self._internal(request)
        finally:
            _wipe_secrets(request, kind)

    async def _served(self, request: p.Seal | p.Open, peer: Peer) -> p.Response:
        await self.custody.auto_unlock(peer.where)
        await self.on_demand.unlock_for(peer)
        if self.state.key is not None:  # locked: _begin says so, no question asked
            await self.approvals.check(peer, request.app)
        pinned = None
        if isinstance(request, p.Seal):
            pinned = await self.keys.pin(request)
        work = self.keys.begin(request, peer, pinned)
        # This task runs on the event loop: a large payload (the first seal to a new router
        # carries one too) is sealed or opened off it, as the crypto pool would.
        reply = await self.services.offload(work.run) if work.large else work.run()
        self.keys.used(work)
        return reply

    def _internal(self, request: p.Request) -> p.Response:
        self.state.counters.errors += 1
        log.exception("internal error while serving %s", type(request).__name__)
        return InternalError("the agent failed on this request; see its log").to_reply()

    async def _slow(self, request: p.Request) -> p.Response:
        services = self.services
        match request:
            case p.Unlock():
                return await self.custody.unlock(request)
            case p.Generate():
                return await self.custody.generate(request)
            case p.Import():
                return await self.custody.import_key(request)
            case p.Status():
                return await self._status()
            case p.PinsList():
                pins = await services.pins_list()
                return p.PinsReply(pins=pins, policy=services.config.pin_policy)
            case p.PinAccept():
                origin = canonical_origin(request.origin)
                fp = None
                if request.router_key_pem is not None:
                    fp = self.keys.router_key(request.router_key_pem)[1]
                pinned = await services.pin_accept(origin, fp, self.state.clock.wall())
                return p.Accepted(origin=origin, fingerprint=pinned)
            case p.PinForget():
                await services.pin_forget(canonical_origin(request.origin))
                return p.Ok()
        raise InternalError(f"unhandled request {type(request).__name__}")  # pragma: no cover

    def _now(self, request: p.Request, peer: Peer) -> p.Response:
        match request:
            case p.Hello():
                # Always answer with our own version, even to another one: the client decides,
                # and only the reply tells it whether it may restart an agent it auto-started.
                return p.HelloReply(
                    protocol=p.PROTOCOL_VERSION,
                    agent_version=__version__,
                    capabilities=list(p.CAPABILITIES),
                    pid=os.getpid(),
                    autostarted=self.state.autostarted,
                )
            case p.PublicKey():
                return self.custody.identity_reply()
            case p.Lock():
                self.state.user_lock()
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
                return p.Ok()  # the server stops after sending this (KINDS: stop)
        raise InternalError(f"unhandled request {type(request).__name__}")  # pragma: no cover

    # --- status ----------------------------------------------------------------------------------

    async def _status(self) -> p.StatusReply:
        state, services = self.state, self.services
        hardening = await services.hardening_report()  # first: the rest is as of the reply
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
            hardening=hardening,
            counters=state.counters.snapshot(),
            served_since_unlock=state.served_since_unlock,
            recent_clients=list(reversed(state.recent.values())),
            uptime=state.clock.now() - state.started,
            locked_by=state.locked_by,
            session=services.session_report(),
        )


def _wipe_secrets(request: p.Request, kind: Kind) -> None:
    for name in kind.secrets:
        secret = getattr(request, name)
        if secret:
            wipe(secret)
