"""The agent's Unix-socket server: a thin asyncio adapter around ``Dispatcher``.

Rules:

- The socket is bound in ``_bind`` (folder rules, 0600 from creation, a live agent's socket is
  never replaced), or inherited from systemd/launchd.
- Every connection's peer uid must equal ours (SO_PEERCRED/getpeereid), else it is closed unread.
- A frame longer than ``MAX_FRAME_BYTES``, or one that stalls half-read for ``FRAME_TIMEOUT``,
  closes that connection. A frame that is not a valid request gets a ``bad_request`` reply and the
  connection stays usable. Nothing a client sends can stop the server.
- SIGTERM (or a ``Stop`` request) stops accepting, lets requests in flight finish (bounded), tells
  watchers, drops the key, and removes the socket if this process created it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Protocol

import msgspec

from nomyo_agent import _systemd
from nomyo_agent import protocol as p
from nomyo_agent._bind import AgentAlreadyRunning, Bound, bind_socket
from nomyo_agent._dispatch import Dispatcher
from nomyo_agent._peer import peer_of
from nomyo_agent._secret import wipe
from nomyo_agent._state import AgentState, Peer
from nomyo_agent.errors import AgentError, BadRequestError

__all__ = ["AgentAlreadyRunning", "AgentServer", "bind_socket"]

log = logging.getLogger("nomyo_agent")

FRAME_TIMEOUT = 30.0  # seconds to finish a frame once its header arrived
DRAIN_TIMEOUT = 10.0  # seconds that requests in flight get at shutdown
MAX_CONNECTIONS = 512
WATCH_BACKLOG = 1024 * 1024  # bytes of unsent events before a watcher counts as stuck
_SECRET_CARRYING = (p.Unlock, p.Generate, p.Import)


class _Closable(Protocol):
    def close(self) -> None: ...


class _PipeServer:
    """The named-pipe accept loop, closed like an ``asyncio.Server``."""

    def __init__(self, task: asyncio.Future[None]) -> None:
        self._task = task

    def close(self) -> None:
        self._task.cancel()


class AgentServer:
    def __init__(
        self,
        dispatcher: Dispatcher,
        state: AgentState,
        *,
        path: str,
        sock: socket.socket | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.state = state
        self.path = path
        self._inherited = sock
        self._bound: Bound | None = None
        self._on_ready = on_ready
        self._stop = asyncio.Event()
        self.connections: set[_Connection] = set()
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
        server = await self._listen(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C ends it instead
                loop.add_signal_handler(sig, self.request_stop)
        timers = asyncio.create_task(self._timers())
        log.info("listening on %s (pid %d)", self.path, os.getpid())
        if self._on_ready:
            self._on_ready()
        try:
            await self._stop.wait()
        finally:
            log.info("stopping")
            _systemd.notify("STOPPING=1")
            server.close()
            timers.cancel()
            self.state.emit("stopping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), DRAIN_TIMEOUT)
            self.state.lock("stopping")
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0)  # let the transports flush and close
            if self._bound:
                self._bound.remove()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(sig)

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> _Closable:
        """The Unix socket (bound here, or inherited from systemd/launchd), or on Windows the
        named pipe; both feed the same ``_Connection`` protocol."""
        if sys.platform == "win32":
            from nomyo_agent._winpipe import serve_pipe  # noqa: PLC0415 - Windows only

            def on_pipe(pid: int) -> _Connection:
                # The pipe's DACL admits only our user and rejects remote clients, so the
                # kernel has done the uid check; the pid is for the tray's "recent apps".
                return _Connection(self, peer=Peer(pid=pid, uid=-1, gid=-1, exe=f"pid {pid}"))

            return _PipeServer(asyncio.ensure_future(serve_pipe(self.path, on_pipe)))
        sock = self._inherited
        if sock is None:
            self._bound = bind_socket(self.path)
            sock = self._bound.sock
        return await loop.create_unix_server(lambda: _Connection(self), sock=sock)

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

    def begin_request(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def end_request(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()


class _Connection(asyncio.Protocol):
    """One client. Requests are answered strictly in order; cheap ones synchronously, as soon as
    their frame is complete (no task, no stream machinery: the hot path of seal and open), slow
    ones (unlock, generate, import) in a task while later frames wait their turn."""

    def __init__(self, server: AgentServer, peer: Peer | None = None) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = peer  # known up front for a Windows pipe; else read from the socket
        self.frames = p.FrameReader()
        self.pending: collections.deque[bytes] = collections.deque()
        self.busy = False
        self.watching = False
        self.timer: asyncio.TimerHandle | None = None

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server, state = self.server, self.server.state
        if self.peer is None:  # a Unix socket: the kernel tells who is there
            if sys.platform == "win32":
                raise AgentError("a pipe connection must come with its peer")
            try:
                self.peer = peer_of(transport.get_extra_info("socket"))
            except OSError:
                transport.abort()
                return
            if self.peer.uid != os.getuid():
                state.counters.rejected_peers += 1
                log.warning(
                    "refused a connection from uid %d (pid %d)", self.peer.uid, self.peer.pid
                )
                transport.abort()
                return
        if len(server.connections) >= MAX_CONNECTIONS or server.stopping:
            transport.abort()
            return
        state.counters.connections += 1
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.state.watchers.discard(self._push)
        self._disarm()

    def data_received(self, data: bytes) -> None:
        if self.watching or self.transport is None or self.transport.is_closing():
            return  # a watcher has nothing to say; anything it sends is ignored
        try:
            self.pending.extend(self.frames.feed(data))
        except p.FrameTooLarge as exc:
            log.warning("closed a connection: %s", exc)
            self.transport.abort()
            return
        # Only a started frame has a deadline: an idle connection between frames is legitimate.
        if self.frames.pending:
            if self.timer is None:
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(FRAME_TIMEOUT, self._stalled)
        else:
            self._disarm()
        self._pump()

    # --- requests -------------------------------------------------------------------

    def _stalled(self) -> None:
        log.warning("closed a connection that stalled mid-frame")
        if self.transport:
            self.transport.abort()

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _pump(self) -> None:
        server, transport = self.server, self.transport
        assert transport is not None
        assert self.peer is not None
        while self.pending and not self.busy and not transport.is_closing():
            body = self.pending.popleft()
            try:
                request = p.decode_request(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                server.state.counters.errors += 1
                self._send(BadRequestError(f"invalid request: {exc}").to_reply())
                continue
            if isinstance(request, p.Watch):
                self._start_watch()
                return
            if server.dispatcher.immediate(request):
                self._send(server.dispatcher.call_now(request, self.peer))
                if isinstance(request, p.Stop):
                    server.request_stop()
                continue
            self.busy = True
            server.track(asyncio.ensure_future(self._slow(request, body)))

    async def _slow(self, request: p.Request, body: bytes) -> None:
        assert self.peer is not None
        self.server.begin_request()
        try:
            reply = await self.server.dispatcher(request, self.peer)
        finally:
            self.server.end_request()
            if isinstance(request, _SECRET_CARRYING):
                wipe(body)
            self.busy = False
        self._send(reply)
        self._pump()

    def _send(self, reply: p.Response) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(p.encode_frame(reply))

    # --- watch -------------------------------------------------------------------

    def _start_watch(self) -> None:
        self.watching = True
        self.pending.clear()
        self._disarm()
        self._send(self.server.state.event("watch"))
        self.server.state.watchers.add(self._push)

    def _push(self, event: p.StateEvent) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > WATCH_BACKLOG:
            log.warning("dropped a watcher that stopped reading")
            transport.abort()
            return
        transport.write(p.encode_frame(event))
        if event.reason == "stopping":
            transport.close()
