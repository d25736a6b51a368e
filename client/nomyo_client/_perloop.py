"""What a client holds on one event loop: its transport and its use of the agent connection.

Rules of this module: sockets cannot move between loops, so each loop a client runs on gets its
own ``LoopState``, made by ``on_this_loop``; it is closed once, whichever comes first: the
client's ``aclose``, ``asyncio.run()`` ending, or the client being dropped unclosed (as the
public client allows). A transport the caller gave is never closed here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from nomyo_client._agent import AgentLink
from nomyo_client._transport import Transport

__all__ = ["LoopResources", "LoopState", "on_this_loop"]


@dataclass
class LoopResources:
    """What a client holds on one loop: closed once, explicitly or when the client is gone."""

    http: Transport
    owns_http: bool
    agent: AgentLink
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.agent.aclose()
        if self.owns_http:
            await self.http.aclose()


@dataclass
class LoopState:
    """A client's resources on ``loop``, with the parked ``closer`` that closes them, and the
    locks that let concurrent first requests fetch each router key once."""

    loop: asyncio.AbstractEventLoop
    resources: LoopResources
    closer: AsyncGenerator[None, None]
    key_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def park(self) -> None:
        """Start the closer: from now on the loop's end or the client's loss closes it."""
        await self.closer.__anext__()

    async def close(self) -> None:
        await self.closer.aclose()  # runs the resources' close

    @property
    def http(self) -> Transport:
        return self.resources.http

    @property
    def agent(self) -> AgentLink:
        return self.resources.agent

    @property
    def closed(self) -> bool:
        return self.resources.closed


async def _close_when_done(resources: LoopResources) -> AsyncGenerator[None, None]:
    # Parked here for the client's life on this loop, this generator closes its sockets when
    # whichever comes first: asyncio.run() ending (loop.shutdown_asyncgens() closes every
    # suspended async generator), or the client being dropped unclosed, as the public client
    # allows (the loop's asyncgen finaliser hook closes a suspended generator that is garbage).
    # It must not reference the LoopState: that would make a cycle, and a dropped client's
    # sockets would wait for the cyclic garbage collector.
    try:
        yield
    finally:
        await resources.close()


def on_this_loop(http: Transport, owns_http: bool, agent: AgentLink) -> LoopState:
    """The running loop's state for a client; ``park`` it before using it (no await here, so
    that the caller can keep it before concurrent first calls get a turn)."""
    resources = LoopResources(http=http, owns_http=owns_http, agent=agent)
    closer = _close_when_done(resources)
    return LoopState(loop=asyncio.get_running_loop(), resources=resources, closer=closer)
