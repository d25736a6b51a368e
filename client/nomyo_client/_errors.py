"""The client's exceptions: the seed API's names, plus the agent's errors under the same base.

::

    APIError                         message, status_code, error_details, hint
     ├── InvalidRequestError         400, and client-side refusals (also a ValueError)
     ├── AuthenticationError         401
     ├── ForbiddenError              403 (model not allowed for the tier)
     ├── RateLimitError              429 (retried; ``retry_after`` when the router said)
     ├── ServerError                 500 (retried)
     ├── ServiceUnavailableError     503 (retried)
     ├── APIConnectionError          network failure or timeout (also a ConnectionError)
     │    └── TLSError               the TLS handshake failed (.plain_http: no TLS there)
     ├── ResponseTooLargeError       the router's answer is over the client's 64 MiB cap
     ├── SecurityError               bad package, failed tag, wrong recipient, plain HTTP
     │    └── RouterKeyChangedError  the agent refused a router key that differs from its pin
     └── AgentError                  the local agent could not help
          ├── AgentUnavailableError  nothing answers at the socket (and auto-start is off/failed),
          │                          or not within the deadline, or what is there is not the
          │                          user's own (nothing was sent)
          ├── AgentLockedError       the identity is locked
          ├── NoIdentityError        the agent has no identity yet
          ├── IdentityExistsError    the agent holds another identity already
          ├── AgentProtocolError     the agent speaks another protocol version
          └── AgentDeniedError       the user did not allow this app to use the identity

Rules of this module: every message is one lower-case line with no final period; ``hint`` says
what to do. Lower-layer errors (``nomyo_agent.errors``, httpx) are translated at the boundary with
``raise X(...) from exc``, never leaked. The public ``nomyo`` client raises ``ValueError`` for a bad
``security_tier`` and ``ConnectionError`` when the router cannot be reached; the two mixins keep
``except ValueError`` / ``except ConnectionError`` in existing code working.

The agent's errors become these in ``_from_agent`` (``from_agent_error``), which also says why
the four names this tree shares with ``nomyo_agent.errors`` do not inherit from the agent's.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "AgentDeniedError",
    "AgentError",
    "AgentLockedError",
    "AgentProtocolError",
    "AgentUnavailableError",
    "AuthenticationError",
    "ForbiddenError",
    "IdentityExistsError",
    "InvalidRequestError",
    "NoIdentityError",
    "RateLimitError",
    "ResponseTooLargeError",
    "RouterKeyChangedError",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "TLSError",
]


class APIError(Exception):
    """Base of every error this client raises. ``str(exc)`` is ``exc.message``."""

    default_status: int | None = None
    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        error_details: dict[str, Any] | None = None,
        *,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = self.default_status if status_code is None else status_code
        self.error_details = error_details
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(APIError, ValueError):
    """The router refused the request as invalid (400), or the client refused it before sending."""

    default_status = 400


class AuthenticationError(APIError):
    """The router refused the API key (401)."""

    default_status = 401
    default_hint = "check the api_key (or NOMYO_API_KEY)"


class ForbiddenError(APIError):
    """The router refused access (403), e.g. the model is not allowed for the security tier."""

    default_status = 403


class RateLimitError(APIError):
    """Too many requests (429); ``retry_after`` is the router's ``Retry-After`` in seconds."""

    default_status = 429
    default_hint = "slow down, or raise max_retries"
    retry_after: float | None = None


class ServerError(APIError):
    """The router failed (500)."""

    default_status = 500


class ServiceUnavailableError(APIError):
    """The inference backend is unavailable (503)."""

    default_status = 503
    default_hint = "the router's backend is down or busy; retry later"


class APIConnectionError(APIError, ConnectionError):
    """The router could not be reached, dropped the connection or did not answer in time."""

    default_hint = "check the base URL and your network"


class TLSError(APIConnectionError):
    """The TLS handshake with the router failed: its certificate does not verify, or
    (``plain_http``) what answers there speaks plain HTTP. Nothing was sent, and trying again
    cannot help, so it is not retried."""

    default_hint = (
        "check the router's certificate; for a private CA, point SSL_CERT_FILE at it "
        "(or pass http_client=)"
    )

    def __init__(self, message: str, *, plain_http: bool, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.plain_http = plain_http


class ResponseTooLargeError(APIError):
    """The router answered, but with more than the client accepts (``max_bytes``, 64 MiB).

    Nothing is retried: the router has acted on the request. Every answer within the cap opens.
    """

    default_hint = "ask for less (a smaller n or max_tokens), or split the request"

    def __init__(self, message: str, *, max_bytes: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.max_bytes = max_bytes


class SecurityError(APIError):
    """A security check failed: nothing was sent, or the router's answer was not trustworthy."""


class RouterKeyChangedError(SecurityError):
    """The router's key differs from the one the agent pinned; the request was not sent."""

    def __init__(self, message: str, *, origin: str, fingerprint: str | None, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.origin = origin
        self.fingerprint = fingerprint


class AgentError(APIError):
    """The local nomyo-agent could not do what the request needed."""

    default_hint = "check `nomyo-agent status`"


class AgentUnavailableError(AgentError):
    """No agent answers at the socket, or it did not answer within the call's deadline."""

    default_hint = "start it with `nomyo-agent start`, or unset NOMYO_AGENT_AUTOSTART=0"


class AgentLockedError(AgentError):
    """The agent holds an identity but it is locked."""

    default_hint = "run `nomyo-agent unlock` (or unlock from the tray icon)"


class NoIdentityError(AgentError):
    """The agent has no identity yet."""

    default_hint = "run `nomyo-agent keygen`, or `nomyo-agent import client_keys/private_key.pem`"


class IdentityExistsError(AgentError):
    """The agent holds an identity already, and the request would replace it."""


class AgentProtocolError(AgentError):
    """The agent and this client speak different protocol versions."""

    default_hint = "restart the agent so that it matches the client: `nomyo-agent stop`"


class AgentDeniedError(AgentError):
    """The user did not allow this app to use the identity (the agent's ``confirm``); nothing
    was sealed."""

    default_hint = (
        "the choice holds until the agent locks; `nomyo-agent apps forget APP` asks again"
    )
