"""When and how long to wait before trying a request again; no I/O of its own.

Rules of this module: only statuses the router documents as transient (429, 500, 502, 503, 504)
and transport failures are retried; a router's ``Retry-After`` wins over our own backoff when it
is reasonable; time, sleeping and randomness are injected so that tests never wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # noqa: PLC0415 - rare, and slow to import

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait in between.

    The wait before retry ``n`` (1-based) is ``base_delay * 2 ** (n - 1)``, capped at
    ``max_delay``, times a random factor in [0.5, 1) so that many clients do not retry in step;
    a ``Retry-After`` of at most ``max_retry_after`` seconds is used as given instead.

    Example::

        SecureChatCompletion(base_url, retry=RetryPolicy(max_retries=5, base_delay=0.2))
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry_after is not None and retry_after <= self.max_retry_after:
            return retry_after
        backoff = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return float(backoff * (0.5 + self.random() / 2))
