"""The agent's server: a thin asyncio adapter around ``Dispatcher``.

Rules:

- The socket (or pipe) is opened and removed by ``_listener``; each connection is a frame pump,
  ``_pump.Connection``. This module runs them: timers, shutdown, and the limits across
  connections.
- Connections are bounded: one idle for ``connection_timeout`` is closed, and at
  ``MAX_CONNECTIONS`` the one idle the longest makes way for the newcomer (logged), so that
  ``lock``, ``status`` and the tray always get through.
- SIGHUP calls ``on_reload`` (the daemon re-reads config.toml) and the agent keeps serving.
- SIGTERM (or a ``Stop`` request) stops accepting, lets requests in flight finish (bounded), tells
  watchers, drops the key, and removes the socket if this process created it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nomyo_agent import _systemd
from nomyo_agent import protocol as p
from nomyo_agent._budget import ByteBudget
from nomyo_agent._dispatch import Dispatcher
from nomyo_agent._listener import listen
from nomyo_agent._pump import Connection
from nomyo_agent._state import AgentState, Peer
from nomyo_agent._workers import CryptoPool

__all__ = ["AgentServer"]

log = logging.getLogger("nomyo_agent")

DRAIN_TIMEOUT = 10.0  # seconds that requests in flight get at shutdown
MAX_CONNECTIONS = 512
# Frames being received plus replies not taken, across all connections. It must hold the largest
# frame (an Open of a maximal answer); twice that lets one such answer open while others arrive.
MAX_BUFFERED_BYTES = 2 * p.MAX_FRAME_BYTES
COMPANION_STOP_TIMEOUT = 5.0


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again until they end: on Python 3.11 an
    ``asyncio.wait_for`` whose inner call completes as the cancellation arrives swallows it
    (jeepney's connection set-up has one), and the task would then run on forever."""
    pending = set(tasks)
    deadline = time.monotonic() + COMPANION_STOP_TIMEOUT
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("a companion task failed: %s", task.exception())
    if pending:
        log.warning("%d companion task(s) did not stop", len(pending))


class AgentServer:
    def __init__(
        self,
        dispatcher: Dispatcher,
        state: AgentState,
        *,
        path: str,
        sock: socket.socket | None = None,
        on_ready: Callable[[], None] | None = None,
        on_reload: Callable[[], None] | None = None,
        connection_timeout: float = 600.0,
        max_connections: int = MAX_CONNECTIONS,
        budget: int = MAX_BUFFERED_BYTES,
        companions: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.dispatcher = dispatcher
        self.state = state
        self.path = path
        self._inherited = sock
        self._on_ready = on_ready
        self.on_reload = on_reload
        self._companions = companions  # e.g. the desktop-session watch; cancelled after the lock
        self._stop = asyncio.Event()
        self.connections: set[Connection] = set()
        self.connection_timeout = connection_timeout  # 0 = keep idle connections forever
        self.max_connections = max_connections
        self.budget = ByteBudget(budget)
        self.crypto = CryptoPool()
        state.counters.gauges = self._gauges
        self._tasks: set[asyncio.Future[None]] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def track(self, task: asyncio.Future[None]) -> None:
        """Keep a reference to a request task until it ends (asyncio keeps only weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or a ``Stop`` request; then shut down cleanly."""
        loop = asyncio.get_running_loop()
        listener = await listen(self.path, self._inherited, self._connection)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C ends it instead
                loop.add_signal_handler(sig, self.request_stop)
        if self.on_reload is not None and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, self.on_reload)
        timers = asyncio.create_task(self._timers())
        sweeper = asyncio.create_task(self._sweep_idle())
        companions = [asyncio.ensure_future(run()) for run in self._companions]
        log.info("listening on %s (pid %d)", self.path, os.getpid())
        if self._on_ready:
            self._on_ready()
        try:
            await self._stop.wait()
        finally:
            log.info("stopping")
            _systemd.notify("STOPPING=1")
            listener.close()
            timers.cancel()
            sweeper.cancel()
            self.state.emit("stopping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), DRAIN_TIMEOUT)
            self.crypto.shutdown()
            self.state.lock("stopping")
            # Only now: a sleep inhibitor outlives the key, never less.
            await _cancel_all(companions)
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0)  # let the transports flush and close
            listener.remove()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(sig)
            if self.on_reload is not None and hasattr(signal, "SIGHUP"):
                loop.remove_signal_handler(signal.SIGHUP)

    def _connection(self, peer: Peer | None) -> Connection:
        return Connection(self, peer)

    async def _timers(self) -> None:
        # Sleep on the event loop's clock (which may stop during suspend) but in steps of at most a
        # second, and judge deadlines on the injected clock (CLOCK_BOOTTIME): after a resume the
        # next step locks at once.
        clock = self.state.clock
        while True:
            deadline = self.state.next_deadline()
            step = 1.0 if deadline is None else min(1.0, max(0.0, deadline - clock.now()))
            await asyncio.sleep(step)
            reason = self.state.check_timers()
            if reason:
                log.info("locked: %s", reason.replace("_", " "))

    async def _sweep_idle(self) -> None:
        """Close connections idle longer than ``connection_timeout`` (watchers are never idle:
        they wait for pushes). Clients reconnect on their next request."""
        while True:
            timeout = self.connection_timeout
            await asyncio.sleep(min(5.0, timeout / 4) if timeout > 0 else 5.0)
            if timeout <= 0:
                continue
            cutoff = time.monotonic() - timeout
            stale = [c for c in self.connections if c.idle and c.last_active <= cutoff]
            for conn in stale:
                if conn.transport is not None:
                    conn.transport.close()
            if stale:
                log.info("closed %d connection(s) idle for over %.0f s", len(stale), timeout)

    def _gauges(self) -> dict[str, int]:
        return {
            "open_connections": len(self.connections),
            "buffered_bytes": self.budget.used,
            "waiting_for_memory": self.budget.waiting,
        }

    def make_room(self, newcomer: Connection) -> bool:
        """Whether a new connection may stay. At the cap, the connection idle the longest makes
        way; failing that the oldest watcher (a tray reconnects), then the one whose request has
        been arriving the longest (a stalled sender; a client resends on a new connection). So
        `lock`, `status` and the tray always get through, however many connections apps leave
        open or dribble into. Only requests being answered are never cut; a refusal is logged."""
        if len(self.connections) < self.max_connections:
            return True
        conns = self.connections
        victims = (
            [c for c in conns if c.idle]
            or [c for c in conns if c.watching]
            or [c for c in conns if not c.busy and not c.watching]
        )
        counters = self.state.counters
        if not victims:
            counters.refused_connections += 1
            if counters.refused_connections % 100 == 1:  # the first, then every hundredth
                log.warning(
                    "refused a connection from pid %d: %d connections, all busy (%d refused)",
                    newcomer.peer.pid if newcomer.peer else -1,
                    len(self.connections),
                    counters.refused_connections,
                )
            return False
        counters.evicted_connections += 1
        victim = min(victims, key=lambda c: c.last_active)
        what = "idle" if victim.idle else "watching" if victim.watching else "mid-request"
        log.warning(
            "at %d connections: closed the one %s longest (pid %d) to let pid %d in",
            len(self.connections),
            what,
            victim.peer.pid if victim.peer else -1,
            newcomer.peer.pid if newcomer.peer else -1,
        )
        self.connections.discard(victim)
        if victim.transport is not None:
            victim.transport.abort()
        return True

    def begin_request(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def end_request(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
