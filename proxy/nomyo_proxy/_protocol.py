"""uvicorn's HTTP protocols (httptools where installed, else h11) with a deadline on the head.

uvicorn times a connection out only once it has answered something (its keep-alive timer): a
client that connects and then sends its request line and headers slowly, or not at all, holds
its connection and a file descriptor for as long as it likes. Here the head of each request must
arrive within ``head_timeout`` seconds of the connection or of the previous answer, or the
connection is closed. The HTTP itself stays uvicorn's (httptools' C parser, or h11); only a timer
is added, the same on either.

``http_protocol(name, seconds)`` picks the class: ``auto`` is httptools when it can be imported
(uvicorn's own ``standard`` choice: about a tenth less of the proxy's CPU per request than h11,
docs/proxy.md), else h11, which is pure Python and installs everywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from nomyo_proxy._errors import ConfigError

__all__ = ["HTTP_CHOICES", "HeadDeadline", "http_protocol"]

HTTP_CHOICES = ("auto", "h11", "httptools")


class HeadDeadline:
    """The head deadline, mixed in before a uvicorn HTTP protocol class: both keep the request's
    cycle in ``self.cycle`` and call ``on_response_complete`` after each answer."""

    head_timeout = 30.0
    _head_due: asyncio.TimerHandle | None = None
    # Provided by the uvicorn protocol class this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_due is not None:
            self._head_due.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if self._head_due is not None:
            self._head_due.cancel()
        # uvicorn makes a new cycle for each request head it has parsed whole: if the cycle is
        # still the one of the previous request when the timer fires, no head came in time.
        self._head_due = self.loop.call_later(self.head_timeout, self._head_late, self.cycle)

    def _head_late(self, cycle_when_armed: object) -> None:
        if self.cycle is cycle_when_armed and not self.transport.is_closing():
            self.transport.close()


def _base(name: str) -> type[asyncio.Protocol]:
    if name == "h11":
        return H11Protocol
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: PLC0415
    except ImportError:  # httptools is not installed (no wheel for this platform)
        if name == "httptools":
            raise ConfigError(
                "--http httptools: httptools is not installed",
                hint="pip install httptools, or --http auto",
            ) from None
        return H11Protocol
    return HttpToolsProtocol


def http_protocol(name: str, seconds: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's ``http=`` setting: ``name``'s parser, this deadline."""
    base = _base(name)
    return type(f"HeadDeadline{base.__name__}", (HeadDeadline, base), {"head_timeout": seconds})
