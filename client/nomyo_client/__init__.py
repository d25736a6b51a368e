"""nomyo_client: the NOMYO secure chat API, with the key held by the nomyo agent.

A drop-in for the public ``nomyo`` client: change ``from nomyo import SecureChatCompletion`` to
``from nomyo_client import SecureChatCompletion``. Requests are sealed and answers opened by the
local ``nomyo-agent`` (started on demand), so this package never imports ``cryptography`` and
never holds a private or AES key.

Example::

    import asyncio
    from nomyo_client import SecureChatCompletion

    async def main() -> None:
        async with SecureChatCompletion(base_url="https://api.nomyo.ai") as client:
            answer = await client.create(
                model="Qwen/Qwen3-0.6B", messages=[{"role": "user", "content": "Hi"}]
            )
            print(answer["choices"][0]["message"]["content"])

    asyncio.run(main())

HTTP goes through a ``Transport`` (``request`` and ``aclose``; ``Answer`` is what ``request``
returns, ``TransportError`` what it raises): the client's own keep-alive pool by default, or
``http_client=`` an ``httpx.AsyncClient`` or any object of that protocol (docs/client.md, "Your
own transport").

Exceptions (every one has ``message``, ``status_code``, ``error_details`` and ``hint``)::

    APIError
     ├── InvalidRequestError         400, or refused before sending (also a ValueError)
     ├── AuthenticationError         401
     ├── ForbiddenError              403
     ├── RateLimitError              429
     ├── ServerError                 500
     ├── ServiceUnavailableError     503
     ├── APIConnectionError          network failure or timeout (also a ConnectionError)
     │    └── TLSError               the TLS handshake failed (.plain_http: no TLS there)
     ├── ResponseTooLargeError       the router's answer is over the 64 MiB cap
     ├── SecurityError               bad package, failed tag, plain HTTP refused
     │    └── RouterKeyChangedError  the agent refused a changed router key; nothing was sent
     └── AgentError
          ├── AgentUnavailableError, AgentLockedError, NoIdentityError, IdentityExistsError,
          └── AgentProtocolError, AgentDeniedError  (the whole tree, with what each means:
                                                      nomyo_client._errors)
"""

from __future__ import annotations

from nomyo_client._chat_completion import SecureChatCompletion
from nomyo_client._completion_client import SecureCompletionClient
from nomyo_client._errors import (
    AgentDeniedError,
    AgentError,
    AgentLockedError,
    AgentProtocolError,
    AgentUnavailableError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    ForbiddenError,
    IdentityExistsError,
    InvalidRequestError,
    NoIdentityError,
    RateLimitError,
    ResponseTooLargeError,
    RouterKeyChangedError,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
    TLSError,
)
from nomyo_client._retry import RetryPolicy
from nomyo_client._sync import SyncSecureChatCompletion
from nomyo_client._transport import Answer, Transport, TransportError

__all__ = [
    "APIConnectionError",
    "APIError",
    "AgentDeniedError",
    "AgentError",
    "AgentLockedError",
    "AgentProtocolError",
    "AgentUnavailableError",
    "Answer",
    "AuthenticationError",
    "ForbiddenError",
    "IdentityExistsError",
    "InvalidRequestError",
    "NoIdentityError",
    "RateLimitError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "RouterKeyChangedError",
    "SecureChatCompletion",
    "SecureCompletionClient",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "SyncSecureChatCompletion",
    "TLSError",
    "Transport",
    "TransportError",
]

from nomyo_agent import __version__ as __version__
