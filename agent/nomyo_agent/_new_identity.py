"""A new identity: ``keygen`` generates one, ``import`` reads one from a PEM file.

``Custody.generate`` and ``Custody.import_key`` hand over to these functions; unlocking the
stored identity stays in ``_custody``, whose lock and passphrase prompt these share.

Rules:

- Under ``Custody.lock``, like an unlock: a keygen never interleaves with an unlock or an import.
- The key store is checked before anyone types a passphrase or waits for a key: no keyring, or a
  store that keeps only passphrase-protected keys and no passphrase, fails first.
- An identity is replaced only with ``force``; importing the key the agent already holds is not
  a conflict (a client's ``load_keys`` may run on every start).
- The key is stored in the keyring and its public part on disk before the state holds it
  (``AgentState.install``); a new passphrase from pinentry is asked twice (confirm).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from nomyo_agent import _identity
from nomyo_agent import protocol as p
from nomyo_agent._secret import SecretBuffer
from nomyo_agent._sessionbus import keyring_call
from nomyo_agent.errors import (
    BadPassphraseError,
    BadRequestError,
    IdentityExistsError,
    PassphraseRequiredError,
)

if TYPE_CHECKING:
    from nomyo_agent._services import Services
    from nomyo_agent._state import AgentState

__all__ = ["Custody", "generate", "import_key", "no_passphrase_refused"]

Secret = bytes | bytearray | memoryview


class Custody(Protocol):
    """What a new identity needs of ``_custody.Custody`` (named here, so that this module does
    not import the one that calls it): the state, the services, the lock and the prompt."""

    state: AgentState
    services: Services
    lock: asyncio.Lock

    @property
    def max_attempts(self) -> int: ...

    async def ask(
        self, where: p.PinEntry, *, confirm: bool, error: str | None, **text: object
    ) -> SecretBuffer: ...

    def identity_reply(self) -> p.IdentityReply: ...


def no_passphrase_refused() -> BadRequestError:
    return BadRequestError(
        "the file key store keeps only passphrase-protected keys",
        hint="choose a passphrase (pinentry asks, or --passphrase-stdin); a key file with no "
        "passphrase would be readable by anything that can read your files",
    )


async def _store_ready(custody: Custody, passphrase: bytes | None) -> None:
    """Fail now, before anyone types a passphrase or waits for a key, if the key cannot be
    stored: no keyring at all, or no passphrase for a store that requires one."""
    store = custody.services.keystore
    if passphrase == b"" and store.requires_passphrase:
        raise no_passphrase_refused()
    await asyncio.to_thread(store.check)


async def _new_passphrase(
    custody: Custody, given: bytes | None, where: p.PinEntry | None, what: str
) -> SecretBuffer | None:
    """The passphrase to store a new identity under; None means none."""
    secret = await _ask_new_passphrase(custody, given, where, what)
    if secret is None and custody.services.keystore.requires_passphrase:
        raise no_passphrase_refused()
    return secret


async def _ask_new_passphrase(
    custody: Custody, given: bytes | None, where: p.PinEntry | None, what: str
) -> SecretBuffer | None:
    if given is not None:
        return SecretBuffer.from_bytes(given) if given else None
    if where is None:
        return None
    secret = await custody.ask(
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


def _check_replace(custody: Custody, force: bool) -> None:
    info = custody.state.info
    if info is not None and not force:
        raise IdentityExistsError(
            f"an identity exists already ({p.short_fingerprint(info.fingerprint)})"
        )


async def _install(
    custody: Custody,
    stored: SecretBuffer,
    *,
    info: _identity.IdentityInfo,
    passphrase: Secret | None,
    reason: str,
    where: p.PinEntry | None = None,
) -> p.IdentityReply:
    """Store a new identity in the keyring and on disk, and keep it unlocked."""
    if not passphrase and custody.services.keystore.requires_passphrase:
        raise no_passphrase_refused()  # callers check earlier; this is the last word
    keystore = custody.services.keystore
    await keyring_call(keystore, where, lambda: keystore.save(stored.view))
    await custody.services.save_identity(info)
    key = await asyncio.to_thread(_identity.unlock, stored.view, passphrase)
    custody.state.install(info, key, reason)
    return custody.identity_reply()


async def generate(custody: Custody, request: p.Generate) -> p.Response:
    _check_replace(custody, request.force)
    async with custody.lock:
        await _store_ready(custody, request.passphrase)
        secret = await _new_passphrase(custody, request.passphrase, request.pinentry, "new key")
        try:
            pw = secret.view if secret else None
            stored, info = await asyncio.to_thread(_identity.generate, request.bits, pw)
            try:
                return await _install(
                    custody,
                    stored,
                    info=info,
                    passphrase=pw,
                    reason="generate",
                    where=request.pinentry,
                )
            finally:
                stored.close()
        finally:
            if secret:
                secret.close()


async def import_key(custody: Custody, request: p.Import) -> p.Response:
    # No early _check_replace: importing the key the agent already holds is not a conflict
    # (a client's load_keys may run on every start), and only the key worker can tell.
    async with custody.lock:
        await _store_ready(custody, request.passphrase)
        file_secret: SecretBuffer | None = (
            SecretBuffer.from_bytes(request.file_password)
            if request.file_password is not None
            else None
        )
        error = None
        try:
            for _ in range(custody.max_attempts):
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
                    file_secret = await custody.ask(
                        request.pinentry,
                        confirm=False,
                        error=error,
                        title="nomyo-agent",
                        description="Enter the passphrase of the key file being imported",
                        prompt="Passphrase:",
                    )
                    continue
                try:
                    current = custody.state.info
                    same = current is not None and current.fingerprint == info.fingerprint
                    if same and not request.force:  # --force re-stores (a new passphrase)
                        return custody.identity_reply()
                    _check_replace(custody, request.force)
                    if not store_pw and custody.services.keystore.requires_passphrase:
                        raise BadRequestError(
                            "the file key store keeps only passphrase-protected keys, and "
                            "this key file has no password",
                            hint="encrypt a copy first, e.g. `openssl pkcs8 -topk8 -v2 "
                            "aes-256-cbc -in private_key.pem -out encrypted.pem`, then "
                            "import encrypted.pem (its password becomes the passphrase)",
                        )
                    return await _install(
                        custody,
                        stored,
                        info=info,
                        passphrase=store_pw,
                        reason="import",
                        where=request.pinentry,
                    )
                finally:
                    stored.close()
            raise BadPassphraseError(
                f"bad passphrase for the key file ({custody.max_attempts} attempts)"
            )
        finally:
            if file_secret:
                file_secret.close()
