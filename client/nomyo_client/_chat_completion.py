"""``SecureChatCompletion``: the seed API's entry point, over the agent.

Rules of this module: the constructor takes the seed's arguments in the seed's order, and every
extra is keyword-only; ``create`` splits the client-only keys (``security_tier``, ``api_key``,
``base_url``) and the OpenAI SDK's request options (``_options``) from the OpenAI parameters,
validates them and builds the plaintext before any I/O, so a refused request never reaches the
agent or the network, and an option meant for this client never ends up inside the payload the
model reads.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nomyo_agent import protocol as p
from nomyo_client import _hints, _wire
from nomyo_client._completion_client import SecureCompletionClient
from nomyo_client._engine import Engine
from nomyo_client._errors import APIConnectionError, APIError
from nomyo_client._options import (
    DEFAULT_BASE_URL,
    check_agent_socket,
    env_default,
    request_options,
)
from nomyo_client._retry import RetryPolicy

if TYPE_CHECKING:
    import httpx

    from nomyo_client._transport import Transport

__all__ = ["SecureChatCompletion"]

# key_dir folders already warned about in this process (one warning each, not one per request).
_warned_key_dirs: set[tuple[str, str]] = set()


class SecureChatCompletion:
    """An OpenAI-style chat completion client whose requests are sealed by the nomyo agent.

    A drop-in for ``nomyo.SecureChatCompletion``: change the import, keep the code. The private
    key stays in the agent; this object holds no key material. One instance keeps one pooled
    HTTP client, so reuse it for many requests (also concurrently); all instances of a process
    share one agent connection per event loop, and one that is dropped unclosed releases its
    connections.

    Example::

        from nomyo_client import SecureChatCompletion

        async with SecureChatCompletion(base_url="https://api.nomyo.ai") as client:
            response = await client.create(
                model="Qwen/Qwen3-0.6B",
                messages=[{"role": "user", "content": "Hello"}],
                temperature=0.7,
            )
            print(response["choices"][0]["message"]["content"])

    Args:
        base_url: the router's root URL (no ``/v1``), ``https://`` unless ``allow_http`` is
            set; default ``NOMYO_BASE_URL``, else ``https://api.nomyo.ai``.
        allow_http: allow plain ``http://`` (local development only).
        api_key: sent as ``Authorization: Bearer ...``; a per-call ``api_key=`` wins; default
            ``NOMYO_API_KEY``.
        secure_memory: accepted for compatibility; keys and AES keys live in the agent, which
            locks and zeroes its own memory, so there is nothing for this process to protect.
        max_retries: retries on 429, 500, 502, 503, 504 and on connections that could not be
            opened; never after the router may have read the request (default 2).
        timeout: seconds (or an ``httpx.Timeout``) per HTTP exchange; default 600 s, 10 s to
            connect. Also the deadline of each agent call (default 120 s), so that a hung agent
            fails the request instead of hanging it.
        http_client: an ``httpx.AsyncClient``, or any ``Transport``, to use instead of the
            client's own HTTP pool (you close it).
        agent_socket: the agent's socket; default ``NOMYO_AGENT_SOCK`` or the per-user path.
        key_dir: a public-client ``client_keys`` folder: if the agent has no identity yet, its
            ``private_key.pem`` is imported into the agent on first use. If the agent already
            holds another identity, requests use the agent's and a ``UserWarning`` says so
            (once per process and folder).
        retry: a ``RetryPolicy`` for finer control of backoff (overrides ``max_retries``).
        autostart: start an agent when none answers (default: unless
            ``NOMYO_AGENT_AUTOSTART=0``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        *,
        max_retries: int = 2,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | Transport | None = None,
        agent_socket: str | os.PathLike[str] | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        autostart: bool | None = None,
    ) -> None:
        self.base_url: str = env_default(base_url, "NOMYO_BASE_URL", DEFAULT_BASE_URL) or ""
        self.allow_http = allow_http
        self.api_key = env_default(api_key, "NOMYO_API_KEY")
        self.secure_memory = secure_memory
        check_agent_socket(agent_socket)
        self._agent_socket = agent_socket
        self._autostart = autostart
        self._key_dir = None if key_dir is None else Path(key_dir)
        self._key_dir_checked = key_dir is None
        self._client: SecureCompletionClient | None = None
        self._engine = Engine(
            allow_http=allow_http,
            retry=retry or RetryPolicy(max_retries=max_retries),
            timeout=timeout,
            http_client=http_client,
            agent_socket=agent_socket,
            autostart=autostart,
            key_dir=key_dir,
        )

    @property
    def max_retries(self) -> int:
        return self._engine.retry.max_retries

    @property
    def client(self) -> SecureCompletionClient:
        """The lower-level ``SecureCompletionClient`` for the same router and agent.

        Ported code reaches for ``SecureChatCompletion(...).client`` (the public client's
        attribute), e.g. ``client.fetch_server_public_key()`` or ``client.generate_keys()``.
        """
        if self._client is None:
            self._client = SecureCompletionClient(
                self.base_url,
                self.allow_http,
                self.secure_memory,
                self.max_retries,
                agent_socket=self._agent_socket,
                autostart=self._autostart,
            )
        return self._client

    async def create(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Create a chat completion: sealed by the agent, sent, answered, opened by the agent.

        ``kwargs`` are OpenAI parameters (``temperature``, ``max_tokens``, ``top_p``,
        ``frequency_penalty``, ``presence_penalty``, ``stop``, ``n``, ``tools``,
        ``tool_choice``, ``user``, ``response_format``, ... any key is passed through) plus
        ``security_tier`` (``"standard"``, ``"high"``, ``"maximum"``, sent as a header),
        ``api_key`` and ``base_url`` for this call only, plus the OpenAI SDK's request options:
        ``timeout`` (seconds for this whole call), ``extra_headers`` (sent with the HTTP request,
        outside the encryption) and ``extra_body`` (merged into the request, as the SDK does).
        ``stream=True`` is refused before sending. Returns the ``chat.completion`` dict with
        ``_metadata`` (``payload_id``, ``processed_at``, ``is_encrypted``,
        ``encryption_algorithm`` and the router's own).

        Raises an ``APIError`` subclass; see ``nomyo_client`` for the tree.
        """
        params = dict(kwargs)
        base_url = params.pop("base_url", None) or self.base_url
        tier = _wire.check_tier(params.pop("security_tier", None))
        api_key = params.pop("api_key", None)
        if api_key is None:
            api_key = self.api_key
        timeout, headers = request_options(params)
        url = _wire.check_base_url(base_url, self.allow_http)
        plaintext = _wire.build_payload(model, messages, params)
        try:
            async with asyncio.timeout(timeout):
                await self._check_key_dir()
                return await self._engine.send(
                    url, plaintext, _wire.new_payload_id(), api_key, tier, extra_headers=headers
                )
        except TimeoutError as exc:
            raise APIConnectionError(
                f"no answer from {url} within timeout={timeout:g} s",
                hint="raise timeout= for long generations; the request was not retried",
            ) from exc
        except APIError as exc:
            _hints.explain(exc, url)
            raise

    async def _check_key_dir(self) -> None:
        """Warn once when ``key_dir``'s key is not the identity the agent uses."""
        if self._key_dir_checked or self._key_dir is None:
            return
        self._key_dir_checked = True
        try:
            ours = (self._key_dir / "public_key.pem").read_text().split()
        except (OSError, UnicodeDecodeError):
            return  # nothing to compare (the agent imports private_key.pem if it has none)
        try:
            agent = await (await self._engine.agent()).call(p.PublicKey(), p.IdentityReply)
        except APIError:
            return  # no identity yet: the first seal imports key_dir's key
        seen = (str(self._key_dir.resolve()), agent.fingerprint)
        if agent.public_key_pem.split() != ours and seen not in _warned_key_dirs:
            _warned_key_dirs.add(seen)
            warnings.warn(
                f"key_dir={str(self._key_dir)!r} holds another key than the agent's identity "
                f"({agent.fingerprint[:16]}...): requests go out under the agent's identity. "
                "To use key_dir's key, replace the agent's with "
                f"`nomyo-agent import {self._key_dir / 'private_key.pem'} --force`, or give this "
                "client its own agent with agent_socket=",
                UserWarning,
                stacklevel=3,
            )

    async def acreate(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Async alias of ``create``."""
        return await self.create(model, messages, **kwargs)

    async def aclose(self) -> None:
        """Close the HTTP client (unless it was given) and the agent connection."""
        await self._engine.aclose()

    async def close(self) -> None:
        """Same as ``aclose`` (``create`` is a coroutine here, so is ``close``)."""
        await self._engine.aclose()

    async def __aenter__(self) -> SecureChatCompletion:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
