"""The client's HTTP seam: ``Transport``, what it returns (``Answer``) and what it raises.

Two transports ship: the client's own small HTTP/1.1 keep-alive pool (``_h11pool.H11Pool``, the
default) and an adapter over a caller's ``httpx.AsyncClient`` (``_httpx_adapter``); a caller may
pass any other object of the protocol (a recording wrapper, a test double).

Rules of this module:

- ``Transport`` is the one seam the request path (``_engine``) knows; nothing asks which class a
  transport is. ``tests/test_client_transport.py::TestTransportContract`` is what each must do.
- A transport raises only ``TransportError`` subclasses, whose ``retryable`` is true only when
  the request provably never reached the router: the connection could not be opened, or it was
  found dead before one byte of the request was written. Anything later (a reset, an EOF without
  an answer, a timeout) may come after the router read and acted on the request, so it is final:
  resending could run a paid completion twice. Nothing is resent by a transport: retries are
  the engine's.
- Lower-layer failures are translated here or in the transport, once: a TLS handshake answered
  by something that is not TLS is ``NotTls``, decided from the ``ssl.SSLError``'s reason, never
  from a message.
- Answers larger than ``MAX_RESPONSE_BYTES`` (or a request's smaller ``limit``) are refused
  with ``AnswerTooLarge``, from ``Content-Length`` before the body is read, else as it streams.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from nomyo_agent.protocol import MAX_ANSWER_BYTES

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Answer",
    "AnswerTooLarge",
    "ConnectFailed",
    "Dropped",
    "NotSent",
    "NotTls",
    "ProtocolFailure",
    "TimedOut",
    "Timeouts",
    "TlsFailed",
    "Transport",
    "TransportError",
    "answer_cap",
    "ssl_cause",
    "tls_failure",
]

MAX_RESPONSE_BYTES = MAX_ANSWER_BYTES  # the agent sizes its Open frames to it


def answer_cap(limit: int | None) -> int:
    """The most bytes an answer may have: ``limit``, never over ``MAX_RESPONSE_BYTES``."""
    return MAX_RESPONSE_BYTES if limit is None else min(limit, MAX_RESPONSE_BYTES)


class TransportError(Exception):
    """The exchange failed below HTTP; ``retryable``: the router provably never got it."""

    retryable: ClassVar[bool] = False


class NotSent(TransportError):
    """Not one byte of the request left this process: safe to send again."""

    retryable = True


class ConnectFailed(NotSent):
    """The connection could not be opened (refused, unreachable, TLS refused, timed out)."""


class TlsFailed(TransportError):
    """The TLS handshake failed: no TLS at the other end, or a certificate that does not verify.
    Nothing was sent, but trying again cannot help, so it is not retried."""


class NotTls(TlsFailed):
    """What answered the TLS handshake does not speak TLS (a plain HTTP server, most often)."""


def tls_failure(exc: ssl.SSLError, message: str) -> TlsFailed:
    """The failure for an ``ssl.SSLError`` met while connecting (translated here, once)."""
    if exc.reason == "WRONG_VERSION_NUMBER":  # the answer to our ClientHello was not TLS
        return NotTls(message)
    return TlsFailed(message)


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` under an httpx connect error (httpx chains it through httpcore)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class Dropped(TransportError):
    """The connection broke after the request was (maybe partly) written, before an answer."""


class TimedOut(TransportError):
    """No answer in time: the router may still be working, so this is not retried."""


class ProtocolFailure(TransportError):
    """The other side does not speak HTTP/1.1 correctly."""


class AnswerTooLarge(ProtocolFailure):
    """The answer is (or announces itself as) larger than the caller's limit, by default
    ``MAX_RESPONSE_BYTES``: the router did act on the request, so it is never retried."""


@dataclass(frozen=True)
class Timeouts:
    connect: float | None = 10.0
    read: float | None = 600.0
    write: float | None = 600.0

    @classmethod
    def of(cls, value: float | httpx.Timeout | Timeouts | None) -> Timeouts:
        if value is None:
            return cls()
        if isinstance(value, Timeouts):
            return value
        if isinstance(value, (int, float)):
            return cls(connect=float(value), read=float(value), write=float(value))
        return cls(connect=value.connect, read=value.read, write=value.write)


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


class Transport(Protocol):
    """What the client needs from HTTP: one exchange at a time per call, any number at once.

    ``request`` sends ``method`` to the absolute ``url`` with ``body`` (None: no body) and
    ``headers``, and returns the whole ``Answer``, whatever its status. It raises only
    ``TransportError`` subclasses: ``NotSent``/``ConnectFailed`` when not one byte left (the
    client may retry), ``Dropped`` or ``TimedOut`` once the request may have been read (never
    retried), ``AnswerTooLarge`` for an answer over ``limit`` (or ``MAX_RESPONSE_BYTES``),
    ``TlsFailed`` (``NotTls``: no TLS at the other end) when the handshake fails (not retried:
    trying again cannot help), ``ProtocolFailure`` for what is not HTTP. Concurrent calls must
    be safe. ``aclose`` releases
    the connections; the client calls it only on a transport it made itself.

    Example, a transport that notes each exchange and lets the client's own pool do the work::

        from nomyo_client import Answer, SecureChatCompletion
        from nomyo_client._h11pool import H11Pool

        class Noting:
            def __init__(self) -> None:
                self.pool, self.seen = H11Pool(), []

            async def request(self, method, url, body, headers, *, limit=None) -> Answer:
                answer = await self.pool.request(method, url, body, headers, limit=limit)
                self.seen.append((method, url, answer.status_code))
                return answer

            async def aclose(self) -> None:
                await self.pool.aclose()

        client = SecureChatCompletion(base_url, http_client=Noting())
    """

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer: ...

    async def aclose(self) -> None: ...
