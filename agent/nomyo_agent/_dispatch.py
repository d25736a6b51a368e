"""The agent's core: one request and its peer in, one response out.

Rules (openssh's ``ssh-agent.c`` hygiene):

- Every ``AgentError`` becomes an ``Error`` reply; anything unexpected becomes ``internal`` and
  is logged, never raised: one client's bad request never hurts the others.
- The lock check comes first for every operation that needs the key.
- Blocking work (keyring D-Bus calls, PBKDF2, the key-generation child) runs in a thread, so the
  event loop keeps serving other clients; seal and open run inline (about 2 ms at 4096 bits,
  cheaper than a thread hop for the common case).
- Failed unlocks are answered after a growing delay (``unlock_delay``), held under the unlock
  lock so parallel guesses queue up behind it.
- Passphrases from the wire are wiped once used; those from pinentry live in ``SecretBuffer``s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nomyo_agent import __version__, _envelope, _identity, _keys
from nomyo_agent import protocol as p
from nomyo_agent._pins import PinStore, normalize_origin
from nomyo_agent._secret import SecretBuffer, wipe
from nomyo_agent.errors import (
    AgentError,
    BadPassphraseError,
    CorruptIdentityError,
    IdentityExistsError,
    InternalError,
    LockedError,
    NoIdentityError,
    PassphraseRequiredError,
    PinentryError,
    PinMismatchError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from nomyo_agent._config import Config
    from nomyo_agent._keystore import KeyStore
    from nomyo_agent._state import AgentState, Peer

__all__ = ["AskPassphrase", "Dispatcher", "Services", "unlock_delay"]

log = logging.getLogger("nomyo_agent")

_SLOW = (p.Unlock, p.Generate, p.Import)  # may wait on pinentry, the keyring or a child process
MAX_ATTEMPTS = 3  # pinentry retries within one unlock, as gpg-agent does
ROUTER_KEY_CACHE = 32

AskPassphrase = Callable[..., Awaitable[SecretBuffer]]
"""``_pinentry.get_passphrase`` with the program bound: (where, *, title, description, prompt,
error, confirm) -> SecretBuffer."""

Secret = bytes | bytearray | memoryview


def unlock_delay(failures: int) -> float:
    """Seconds to wait before answering the ``failures``-th consecutive failed unlock."""
    return 0.0 if failures <= 0 else min(0.25 * 2 ** (failures - 1), 16.0)


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

    @property
    def identity_file(self) -> Path:
        return self.config.state_dir / "identity.json"


class Dispatcher:
    def __init__(self, state: AgentState, services: Services) -> None:
        self.state = state
        self.services = services
        self._unlock_lock = asyncio.Lock()
        self._router_keys: OrderedDict[str, tuple[rsa.RSAPublicKey, str]] = OrderedDict()

    def immediate(self, request: p.Request) -> bool:
        """Whether ``call_now`` can answer it: everything but unlock, generate and import, and a
        seal or open that must first auto-unlock an identity with no passphrase."""
        if isinstance(request, _SLOW):
            return False
        return not (isinstance(request, (p.Seal, p.Open)) and self._may_auto_unlock())

    def _may_auto_unlock(self) -> bool:
        state, info = self.state, self.state.info
        return (
            state.key is None
            and info is not None
            and not info.passphrase_protected
            and not state.user_locked
            and self.services.config.auto_unlock
        )

    def call_now(self, request: p.Request, peer: Peer) -> p.Response:
        """Answer a request that needs no waiting, synchronously: the server's hot path."""
        self.state.counters.requests += 1
        try:
            return self._now(request, peer)
        except AgentError as exc:
            self.state.counters.errors += 1
            return exc.to_reply()
        except Exception:
            return self._internal(request)

    async def __call__(self, request: p.Request, peer: Peer) -> p.Response:
        if self.immediate(request):
            return self.call_now(request, peer)
        self.state.counters.requests += 1
        try:
            if isinstance(request, (p.Seal, p.Open)):
                await self._auto_unlock()
                return self._now(request, peer)
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
                    return await self._unlock(request)
                finally:
                    _wipe_opt(request.passphrase)
            case p.Generate():
                try:
                    return await self._generate(request)
                finally:
                    _wipe_opt(request.passphrase)
            case p.Import():
                try:
                    return await self._import(request)
                finally:
                    _wipe_opt(request.passphrase)
                    _wipe_opt(request.file_password)
                    _wipe_opt(request.pem)  # an unencrypted PEM is the private key itself
        raise InternalError(f"unhandled request {type(request).__name__}")  # pragma: no cover

    def _now(self, request: p.Request, peer: Peer) -> p.Response:
        state = self.state
        match request:
            case p.Seal():
                return self._seal(request, peer)
            case p.Open():
                key = self._key()
                opened = _envelope.open_package(key.private_key, request.package)
                state.counters.opens += 1
                state.touch(peer)
                return p.OpenReply(plaintext=opened.plaintext, processed_at=opened.processed_at)
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
                return self._identity_reply()
            case p.Lock():
                state.lock("lock")
                state.user_locked = True
                return p.Ok()
            case p.PinsList():
                return p.PinsReply(
                    pins=self.services.pins.list(), policy=self.services.config.pin_policy
                )
            case p.PinAccept():
                origin = normalize_origin(request.origin)
                fp = None
                if request.router_key_pem is not None:
                    fp = self._router_key(request.router_key_pem)[1]
                pinned = self.services.pins.accept(origin, fp, state.clock.wall())
                return p.Accepted(origin=origin, fingerprint=pinned)
            case p.PinForget():
                self.services.pins.forget(normalize_origin(request.origin))
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

    def _seal(self, request: p.Seal, peer: Peer) -> p.SealReply:
        self._key()
        info = self.state.info
        assert info is not None  # an unlocked agent always has one
        origin = normalize_origin(request.origin)
        router_key, fp = self._router_key(request.router_key_pem)
        pinned = "off"
        if self.services.config.pin_policy == "tofu":
            try:
                pinned = self.services.pins.check(origin, fp, self.state.clock.wall())
            except PinMismatchError:
                self.state.emit("pin_mismatch", origin)
                raise
        package = _envelope.seal(router_key, request.plaintext)
        self.state.counters.seals += 1
        self.state.touch(peer)
        return p.SealReply(
            package=package,
            public_key_pem=info.public_key_pem,
            fingerprint=info.fingerprint,
            pinned=pinned,  # type: ignore[arg-type]
        )

    def _identity_reply(self) -> p.IdentityReply:
        info = self.state.info
        if info is None:
            raise NoIdentityError("the agent has no identity yet")
        return p.IdentityReply(
            public_key_pem=info.public_key_pem,
            fingerprint=info.fingerprint,
            bits=info.bits,
            passphrase_protected=info.passphrase_protected,
        )

    # --- passphrases ---------------------------------------------------------------------------

    async def _ask(
        self, where: p.PinEntry, *, confirm: bool, error: str | None, **text: str
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

    async def _auto_unlock(self) -> None:
        """Load an identity that has no passphrase: nothing to ask, so nothing to wait for."""
        async with self._unlock_lock:
            if not self._may_auto_unlock():
                return  # unlocked meanwhile, or locked by the user: _now says which
            stored = await asyncio.to_thread(self.services.keystore.load)
            if stored is None:
                return  # _now answers "locked"; an explicit unlock explains what is missing
            try:
                key = await asyncio.to_thread(_identity.unlock, stored.view, None)
            finally:
                stored.close()
            self.state.set_unlocked(key)
            self.state.emit("auto_unlock")

    async def _failed(self) -> None:
        self.state.failed_unlocks += 1
        self.state.counters.failed_unlocks += 1
        await self.services.sleep(unlock_delay(self.state.failed_unlocks))

    async def _unlock(self, request: p.Unlock) -> p.Response:
        if self.state.info is None:
            raise NoIdentityError("there is no identity to unlock")
        async with self._unlock_lock:
            if self.state.key is not None:
                return p.Ok()
            stored = await asyncio.to_thread(self.services.keystore.load)
            if stored is None:
                raise CorruptIdentityError(
                    "the keyring holds no nomyo-agent identity, though this agent had one",
                    hint="restore it with `nomyo-agent import PATH --force`, or `keygen --force`",
                )
            try:
                key = await self._unlock_stored(stored, request)
            finally:
                stored.close()
            self.state.set_unlocked(key)
            self.state.emit("unlock")
            return p.Ok()

    async def _unlock_stored(
        self, stored: SecretBuffer, request: p.Unlock
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
        for _ in range(MAX_ATTEMPTS):
            secret = await self._ask(
                request.pinentry,
                confirm=False,
                error=error,
                title="nomyo-agent",
                description=(
                    "Unlock the nomyo-agent identity for end-to-end encrypted inference\n"
                    f"RSA-{info.bits} key {_keys.short_fingerprint(info.fingerprint)}"
                ),
                prompt="Passphrase:",
            )
            try:
                return await asyncio.to_thread(_identity.unlock, view, secret.view)
            except BadPassphraseError:
                await self._failed()
                error = "Bad passphrase, try again"
            finally:
                secret.close()
        raise BadPassphraseError(f"bad passphrase ({MAX_ATTEMPTS} attempts)")

    async def _new_passphrase(
        self, given: bytes | None, where: p.PinEntry | None, what: str
    ) -> SecretBuffer | None:
        """The passphrase to store a new identity under; None means none."""
        if given is not None:
            return SecretBuffer.from_bytes(given) if given else None
        if where is None:
            return None
        secret = await self._ask(
            where,
            confirm=True,
            error=None,
            title="nomyo-agent",
            description=(
                f"Choose a passphrase for the {what}.\n"
                "Leave it empty to rely on the OS keyring's protection alone."
            ),
            prompt="Passphrase:",
        )
        if len(secret) == 0:
            secret.close()
            return None
        return secret

    # --- new identities --------------------------------------------------------------------------

    def _check_replace(self, force: bool) -> None:
        info = self.state.info
        if info is not None and not force:
            raise IdentityExistsError(
                f"an identity exists already ({_keys.short_fingerprint(info.fingerprint)})"
            )

    async def _install(
        self,
        stored: SecretBuffer,
        info: _identity.IdentityInfo,
        passphrase: Secret | None,
        reason: str,
    ) -> p.IdentityReply:
        """Store a new identity in the keyring and on disk, and keep it unlocked."""
        await asyncio.to_thread(self.services.keystore.save, stored.view)
        info.save(self.services.identity_file)
        key = await asyncio.to_thread(_identity.unlock, stored.view, passphrase)
        self.state.lock("replaced")
        self.state.info = info
        self.state.set_unlocked(key)
        self.state.emit(reason)
        return self._identity_reply()

    async def _generate(self, request: p.Generate) -> p.Response:
        self._check_replace(request.force)
        async with self._unlock_lock:
            secret = await self._new_passphrase(request.passphrase, request.pinentry, "new key")
            try:
                pw = secret.view if secret else None
                stored, info = await asyncio.to_thread(_identity.generate, request.bits, pw)
                try:
                    return await self._install(stored, info, pw, "generate")
                finally:
                    stored.close()
            finally:
                if secret:
                    secret.close()

    async def _import(self, request: p.Import) -> p.Response:
        # No early _check_replace: importing the key the agent already holds is not a conflict
        # (a client's load_keys may run on every start), and only the key worker can tell.
        async with self._unlock_lock:
            file_secret: SecretBuffer | None = (
                SecretBuffer.from_bytes(request.file_password)
                if request.file_password is not None
                else None
            )
            error = None
            try:
                for _ in range(MAX_ATTEMPTS):
                    file_pw = file_secret.view if file_secret else None
                    store_pw: Secret | None = file_pw
                    if request.passphrase is not None:
                        store_pw = request.passphrase or None
                    try:
                        stored, info = await asyncio.to_thread(
                            _identity.import_pem, request.pem, file_pw, store_pw
                        )
                    except (PassphraseRequiredError, BadPassphraseError) as exc:
                        if request.pinentry is None:
                            raise
                        if isinstance(exc, BadPassphraseError):
                            error = "Bad passphrase, try again"
                        if file_secret:
                            file_secret.close()
                        file_secret = await self._ask(
                            request.pinentry,
                            confirm=False,
                            error=error,
                            title="nomyo-agent",
                            description="Enter the passphrase of the key file being imported",
                            prompt="Passphrase:",
                        )
                        continue
                    try:
                        current = self.state.info
                        same = current is not None and current.fingerprint == info.fingerprint
                        if same and not request.force:  # --force re-stores (a new passphrase)
                            return self._identity_reply()
                        self._check_replace(request.force)
                        return await self._install(stored, info, store_pw, "import")
                    finally:
                        stored.close()
                raise BadPassphraseError(
                    f"bad passphrase for the key file ({MAX_ATTEMPTS} attempts)"
                )
            finally:
                if file_secret:
                    file_secret.close()

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
        )


def _wipe_opt(secret: bytes | None) -> None:
    if secret:
        wipe(secret)
