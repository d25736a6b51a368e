"""nomyo-proxy's errors, and how every failure reaches an app: OpenAI's error JSON and status.

::

    ProxyError                 message, hint (lower-case, no final period)
     ├── TokenError            the token file or a token name (the CLI's errors)
     ├── ConfigError           a refused command line: remote bind without --allow-remote, ...
     └── HTTPError             one answer to an app: status, OpenAI ``type`` and ``code``

``for_client_error`` maps the client library's exceptions (router answers, agent refusals) to an
``HTTPError`` whose status makes an OpenAI SDK raise the matching exception: 401
``AuthenticationError``, 429 ``RateLimitError`` (with ``Retry-After``), 503 and 502
``APIStatusError`` (``InternalServerError``), 400 ``BadRequestError``, 404 ``NotFoundError``.
"""

from __future__ import annotations

import math

import msgspec

from nomyo_client import (
    AgentError,
    AgentLockedError,
    AgentUnavailableError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NoIdentityError,
    RateLimitError,
    RouterKeyChangedError,
    SecurityError,
)

__all__ = ["ConfigError", "HTTPError", "ProxyError", "TokenError", "for_client_error"]


class ProxyError(Exception):
    """Base of nomyo-proxy's errors; ``str(exc)`` is the message."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class TokenError(ProxyError):
    """The token file is unusable, or a token name is invalid, taken or unknown."""


class ConfigError(ProxyError):
    """The proxy refuses to start with these settings."""


class _Body(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _Envelope(msgspec.Struct):
    error: _Body


_encoder = msgspec.json.Encoder()


class HTTPError(ProxyError):
    """An error answer: ``status``, OpenAI's ``type`` and ``code``, extra response headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        hint: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> bytes:
        text = f"{self.message} (hint: {self.hint})" if self.hint else self.message
        return _encoder.encode(_Envelope(_Body(text, self.type, self.param, self.code)))


def for_client_error(exc: APIError) -> HTTPError:
    """The answer for an exception of ``nomyo_client``."""
    hint = exc.hint or ""
    match exc:
        case AgentLockedError():
            return HTTPError(
                503,
                f"the nomyo agent is locked: {exc.message}",
                type="agent_error",
                code="agent_locked",
                hint="unlock it with `nomyo-agent unlock` or from the tray icon, then retry",
            )
        case NoIdentityError():
            return HTTPError(503, exc.message, type="agent_error", code="no_identity", hint=hint)
        case AgentUnavailableError():
            return HTTPError(
                503,
                f"no nomyo agent answers: {exc.message}",
                type="agent_error",
                code="agent_unavailable",
                hint="start it with `nomyo-agent start`",
            )
        case AgentError():
            return HTTPError(503, exc.message, type="agent_error", code="agent_error", hint=hint)
        case RouterKeyChangedError():
            return HTTPError(
                502, exc.message, type="router_error", code="router_key_changed", hint=hint
            )
        case SecurityError():
            return HTTPError(
                502, exc.message, type="router_error", code="security_error", hint=hint
            )
        case APIConnectionError():
            return HTTPError(
                502, exc.message, type="router_error", code="router_unreachable", hint=hint
            )
        case AuthenticationError():
            # The router refused the proxy's own API key: not the app's fault, so not a 401 (that
            # would tell the app its token is wrong).
            return HTTPError(
                502,
                exc.message,
                type="router_error",
                code="router_authentication_failed",
                hint="check the router API key nomyo-proxy uses (NOMYO_API_KEY, --api-key-file)",
            )
        case RateLimitError():
            headers: tuple[tuple[bytes, bytes], ...] = ()
            if exc.retry_after is not None:
                seconds = str(max(0, math.ceil(exc.retry_after))).encode()
                headers = ((b"retry-after", seconds),)
            return HTTPError(
                429, exc.message, type="rate_limit_error", code="rate_limited", headers=headers
            )
        case InvalidRequestError():
            return HTTPError(400, exc.message, type="invalid_request_error", hint=hint)
    status = exc.status_code if exc.status_code in (403, 404, 500, 502, 503, 504) else 502
    assert status is not None
    return HTTPError(status, exc.message, type="router_error", code=f"router_{status}", hint=hint)
