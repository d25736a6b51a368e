"""``SecureChatCompletion``: the seed API's entry point, over the agent.

Rules of this module: the constructor takes the seed's arguments in the seed's order, and every
extra is keyword-only; ``create`` splits the client-only keys (``security_tier``, ``api_key``,
``base_url``) from the OpenAI parameters, validates them and builds the plaintext before any
I/O, so a refused request never reaches the agent or the network.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nomyo_client import _wire
from nomyo_client._engine import Engine
from nomyo_client._retry import RetryPolicy

if TYPE_CHECKING:
    import httpx

__all__ = ["SecureChatCompletion"]


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
        base_url: the router, ``https://`` unless ``allow_http`` is set.
        allow_http: allow plain ``http://`` (local development only).
        api_key: sent as ``Authorization: Bearer ...``; a per-call ``api_key=`` wins.
        secure_memory: accepted for compatibility; keys and AES keys live in the agent, which
            locks and zeroes its own memory, so there is nothing for this process to protect.
        max_retries: retries on 429, 500, 502, 503, 504 and on connections that could not be
            opened; never after the router may have read the request (default 2).
        timeout: seconds (or an ``httpx.Timeout``) per HTTP exchange; default 600 s, 10 s to
            connect. Also the deadline of each agent call (default 120 s), so that a hung agent
            fails the request instead of hanging it.
        http_client: an ``httpx.AsyncClient`` to use instead of the client's own (you close it).
        agent_socket: the agent's socket; default ``NOMYO_AGENT_SOCK`` or the per-user path.
        key_dir: a public-client ``client_keys`` folder: if the agent has no identity yet, its
            ``private_key.pem`` is imported into the agent on first use; otherwise ignored.
        retry: a ``RetryPolicy`` for finer control of backoff (overrides ``max_retries``).
        autostart: start an agent when none answers (default: unless
            ``NOMYO_AGENT_AUTOSTART=0``).
    """

    def __init__(
        self,
        base_url: str = "https://api.nomyo.ai",
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        *,
        max_retries: int = 2,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | None = None,
        agent_socket: str | os.PathLike[str] | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        autostart: bool | None = None,
    ) -> None:
        self.base_url = base_url
        self.allow_http = allow_http
        self.api_key = api_key
        self.secure_memory = secure_memory
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

    async def create(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Create a chat completion: sealed by the agent, sent, answered, opened by the agent.

        ``kwargs`` are OpenAI parameters (``temperature``, ``max_tokens``, ``top_p``,
        ``frequency_penalty``, ``presence_penalty``, ``stop``, ``n``, ``tools``,
        ``tool_choice``, ``user``, ``response_format``, ... any key is passed through) plus
        ``security_tier`` (``"standard"``, ``"high"``, ``"maximum"``, sent as a header),
        ``api_key`` and ``base_url`` for this call only. ``stream=True`` is refused before
        sending. Returns the ``chat.completion`` dict with ``_metadata`` (``payload_id``,
        ``processed_at``, ``is_encrypted``, ``encryption_algorithm`` and the router's own).

        Raises an ``APIError`` subclass; see ``nomyo_client`` for the tree.
        """
        params = dict(kwargs)
        base_url = params.pop("base_url", None) or self.base_url
        tier = _wire.check_tier(params.pop("security_tier", None))
        api_key = params.pop("api_key", None)
        if api_key is None:
            api_key = self.api_key
        url = _wire.check_base_url(base_url, self.allow_http)
        plaintext = _wire.build_payload(model, messages, params)
        return await self._engine.send(url, plaintext, _wire.new_payload_id(), api_key, tier)

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
