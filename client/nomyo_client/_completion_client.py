"""``SecureCompletionClient``: the seed's lower-level class, each method done by the agent.

Rules of this module: same method names, signatures and sync/async nature as the seed (and the
public 0.2.9 client), but no key ever lives here. ``generate_keys`` and ``load_keys`` give the
agent an identity instead of this object; ``encrypt_payload`` and ``decrypt_response`` are the
agent's seal and open; the request path is the shared ``Engine``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nomyo_agent import protocol as p
from nomyo_agent.paths import socket_path
from nomyo_client import _autostart, _hints, _wire
from nomyo_client._agent import AgentLink
from nomyo_client._engine import Engine
from nomyo_client._errors import (
    APIError,
    IdentityExistsError,
    InvalidRequestError,
    NoIdentityError,
)
from nomyo_client._loop import shared_loop
from nomyo_client._options import check_agent_socket, env_default
from nomyo_client._retry import RetryPolicy

if TYPE_CHECKING:
    import httpx

    from nomyo_client._transport import Transport

__all__ = ["SecureCompletionClient"]

R = TypeVar("R", bound=p.Response)


class SecureCompletionClient:
    """Seal, send and open secure completion requests; the keys stay in the nomyo agent.

    Example::

        client = SecureCompletionClient(router_url="https://api.nomyo.ai", allow_http=False)
        client.generate_keys()  # makes sure the agent has an identity
        payload = {"model": "Qwen/Qwen3-0.6B", "messages": [{"role": "user", "content": "Hi"}]}
        response = await client.send_secure_request(payload, "my-payload-id")
    """

    def __init__(
        self,
        router_url: str | None = None,
        allow_http: bool = False,
        secure_memory: bool = True,
        max_retries: int = 2,
        *,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | Transport | None = None,
        agent_socket: str | os.PathLike[str] | None = None,
        autostart: bool | None = None,
    ) -> None:
        # The seed's default; NOMYO_BASE_URL (as for SecureChatCompletion) when none is given.
        url = env_default(router_url, "NOMYO_BASE_URL", "https://api.nomyo.ai:12434") or ""
        self.router_url = url.rstrip("/")
        self.allow_http = allow_http
        self.secure_memory = secure_memory
        self.max_retries = max_retries
        self.public_key_pem: str | None = None
        self.key_size = 4096
        check_agent_socket(agent_socket)
        self._socket = socket_path(None if agent_socket is None else os.fspath(agent_socket))
        self._autostart = _autostart.autostart_enabled() if autostart is None else autostart
        self._engine = Engine(
            allow_http=allow_http,
            retry=RetryPolicy(max_retries=max_retries),
            timeout=timeout,
            http_client=http_client,
            agent_socket=self._socket,
            autostart=autostart,
        )

    # --- identity (blocking, as in the seed) -------------------------------------------------

    def _blocking_call(self, request: p.Request, expect: type[R]) -> R:
        """One agent exchange, blocking: through ``AgentLink`` on the process's loop thread, so
        that connecting, auto-start, the ``Hello`` check and error translation are the async
        path's own (and the connection is the one the blocking clients share)."""

        async def call() -> R:
            link = AgentLink(self._socket, autostart=self._autostart)
            try:
                return await link.call(request, expect)
            finally:
                await link.aclose()

        return shared_loop().run(call())

    def generate_keys(
        self, save_to_file: bool = False, key_dir: str = "client_keys", password: str | None = None
    ) -> None:
        """Make sure the agent holds an identity, generating one (RSA-4096) if it has none.

        An existing identity is kept (``nomyo-agent keygen --force`` replaces it), so calling
        this in every process is cheap and keeps one key. ``password``: the passphrase the agent
        stores a new key under (None: no passphrase). ``save_to_file``: write only the public
        key to ``key_dir/public_key.pem``; the private key never leaves the agent.
        """
        try:
            reply = self._blocking_call(p.PublicKey(), p.IdentityReply)
        except NoIdentityError:
            secret = b"" if password is None else password.encode()
            try:
                reply = self._blocking_call(
                    p.Generate(bits=self.key_size, passphrase=secret), p.IdentityReply
                )
            except IdentityExistsError:
                # Another process generated one meanwhile: keep it, as documented.
                reply = self._blocking_call(p.PublicKey(), p.IdentityReply)
        self.public_key_pem = reply.public_key_pem
        if save_to_file:
            folder = Path(key_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "public_key.pem").write_text(reply.public_key_pem, encoding="ascii")

    def load_keys(
        self,
        private_key_path: str,
        public_key_path: str | None = None,
        password: str | None = None,
    ) -> None:
        """Import a PEM private key file into the agent (the public client's ``client_keys``).

        ``password`` opens an encrypted file and stays the key's passphrase in the agent. If
        ``public_key_path`` (or ``public_key.pem`` beside the key) matches the agent's current
        identity, nothing is imported. The file's bytes pass through this process once; prefer
        ``nomyo-agent import PATH``, then delete the file.
        """
        sibling = Path(public_key_path or Path(private_key_path).with_name("public_key.pem"))
        try:
            current = self._blocking_call(p.PublicKey(), p.IdentityReply)
        except NoIdentityError:
            current = None
        same = sibling.is_file() and sibling.read_text().split() == (
            current.public_key_pem.split() if current else None
        )
        if current is not None and same:
            self.public_key_pem = current.public_key_pem
            return
        pem = Path(private_key_path).read_bytes()
        secret = None if password is None else password.encode()
        try:
            reply = self._blocking_call(p.Import(pem=pem, file_password=secret), p.IdentityReply)
        except IdentityExistsError as exc:
            if current:
                # The agent's hint names a CLI flag; a Python caller needs the Python choices.
                exc.message = (
                    f"the agent already holds another identity ({current.fingerprint[:16]}...), "
                    f"not the key in {private_key_path}"
                )
                exc.hint = (
                    "keep using the agent's identity (skip load_keys), give this client its own "
                    "agent with SecureCompletionClient(agent_socket=...), or replace the agent's "
                    f"key for every app with `nomyo-agent import {private_key_path} --force`"
                )
            raise
        self.public_key_pem = reply.public_key_pem

    # --- the wire (async, as in the seed) ----------------------------------------------------

    def _url(self) -> str:
        return _wire.check_base_url(self.router_url, self.allow_http)

    async def fetch_server_public_key(self) -> str:
        """GET the router's ``/pki/public_key`` (PEM text); it is also cached for requests."""
        url = self._url()
        try:
            return await self._engine.fetch_router_key(url)
        except APIError as exc:
            _hints.explain(exc, url)
            raise

    async def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """Seal ``payload`` (an OpenAI request dict) to the router's key: the package bytes."""
        if not isinstance(payload, dict) or not payload:
            raise InvalidRequestError("payload must be a non-empty dict", status_code=None)
        url = self._url()
        key, _ = await self._engine.router_key(url)
        body = _encode(payload)
        sealed = await (await self._engine.agent()).seal(_wire.origin_of(url), key, body)
        self.public_key_pem = sealed.public_key_pem
        return sealed.package

    async def decrypt_response(self, encrypted_response: bytes, payload_id: str) -> dict[str, Any]:
        """Open a response package sealed to the agent's key; adds ``_metadata``."""
        return await self._engine.open(encrypted_response, payload_id)

    async def send_secure_request(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None = None,
        security_tier: str | None = None,
    ) -> dict[str, Any]:
        """Seal ``payload``, POST it, retry what is transient, open the answer."""
        tier = _wire.check_tier(security_tier)
        url = self._url()
        try:
            return await self._engine.send(url, _encode(payload), payload_id, api_key, tier)
        except APIError as exc:
            _hints.explain(exc, url)
            raise

    async def aclose(self) -> None:
        await self._engine.aclose()


def _encode(payload: dict[str, Any]) -> bytes:
    params = {k: v for k, v in payload.items() if k not in ("model", "messages")}
    leaked = _wire.NON_PAYLOAD_KEYS.intersection(params)
    for key in leaked:  # the seed's callers pass these as arguments; never let them through
        params.pop(key)
    return _wire.build_payload(payload.get("model", ""), payload.get("messages", []), params)
