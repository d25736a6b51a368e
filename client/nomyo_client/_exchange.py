"""One HTTP exchange with the retry policy, and the transport's failures in the client's words.

Rules of this module: only ``RETRYABLE_STATUSES`` and transport failures that prove the request
never left (``TransportError.retryable``: the connect failed, or the connection was dead before
one byte was written) are retried, with the ``RetryPolicy``'s backoff. A connection the router
closed after reading the request, a read timeout or a failed TLS handshake is final: the router
may have acted on it (the public client does not resend it either), or trying again cannot help.
A retryable status is returned once the retries run out; the caller maps it to its error.
"""

from __future__ import annotations

from nomyo_client._errors import APIConnectionError, ResponseTooLargeError, TLSError
from nomyo_client._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from nomyo_client._transport import (
    Answer,
    AnswerTooLarge,
    Dropped,
    NotTls,
    TimedOut,
    TlsFailed,
    Transport,
    TransportError,
    answer_cap,
)

__all__ = ["send_with_retries"]


async def send_with_retries(
    http: Transport,
    policy: RetryPolicy,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: dict[str, str],
    limit: int | None = None,
) -> Answer:
    """One HTTP exchange with retries; a retryable status is returned once retries run out."""
    retry = 0
    while True:
        retry_after: float | None = None
        try:
            answer = await http.request(method, url, body, headers, limit=limit)
        except AnswerTooLarge as exc:
            # The router answered (and acted): not a connection failure, and not retried.
            cap = answer_cap(limit)
            raise ResponseTooLargeError(
                f"the router's answer from {url} is over the client's {_size(cap)} cap",
                max_bytes=cap,
            ) from exc
        except TlsFailed as exc:
            raise TLSError(
                f"TLS with the router at {url} failed: {exc}",
                plain_http=isinstance(exc, NotTls),
            ) from exc
        except TimedOut as exc:
            raise APIConnectionError(
                f"the router did not answer {url} in time ({exc})",
                hint="raise timeout= for long generations; the request was not retried",
            ) from exc
        except TransportError as exc:
            if not exc.retryable or retry >= policy.max_retries:
                raise _connection_error(url, exc, retry) from exc
        else:
            if answer.status_code not in RETRYABLE_STATUSES:
                return answer
            if retry >= policy.max_retries:
                return answer
            retry_after = parse_retry_after(answer.headers, policy.clock())
        retry += 1
        await policy.sleep(policy.delay(retry, retry_after))


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _connection_error(url: str, exc: TransportError, retries: int) -> APIConnectionError:
    tries = f" after {retries + 1} attempts" if retries else ""
    if exc.retryable:
        return APIConnectionError(f"could not reach the router at {url}{tries}: {exc}")
    if isinstance(exc, Dropped):
        return APIConnectionError(
            f"the router closed the connection before answering {url}{tries}: {exc}",
            hint="the request was not resent, since the router may have acted on it; "
            "send it again yourself if that is safe",
        )
    return APIConnectionError(f"the router at {url} sent an unusable answer{tries}: {exc}")
