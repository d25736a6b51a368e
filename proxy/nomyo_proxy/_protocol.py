"""uvicorn's h11 protocol with a deadline on the request head.

uvicorn times a connection out only once it has answered something (its keep-alive timer): a
client that connects and then sends its request line and headers slowly, or not at all, holds
its connection and a file descriptor for as long as it likes. Here the head of each request must
arrive within ``head_timeout`` seconds of the connection or of the previous answer, or the
connection is closed. The HTTP itself stays h11's and uvicorn's; only a timer is added.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeadDeadlineProtocol", "with_head_timeout"]


class HeadDeadlineProtocol(H11Protocol):
    head_timeout = 30.0
    _head_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_due is not None:
            self._head_due.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_due is not None:
            self._head_due.cancel()
        # uvicorn makes a new cycle for each request head it has parsed whole: if the cycle is
        # still the one of the previous request when the timer fires, no head came in time.
        self._head_due = self.loop.call_later(self.head_timeout, self._head_late, self.cycle)

    def _head_late(self, cycle_when_armed: object) -> None:
        if self.cycle is cycle_when_armed and not self.transport.is_closing():
            self.transport.close()


def with_head_timeout(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=`` setting, with this deadline."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": seconds})
