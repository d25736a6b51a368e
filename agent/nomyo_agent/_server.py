"""The agent's Unix-socket server: a thin asyncio adapter around ``Dispatcher``.

Rules:

- The socket is bound in ``_bind`` (folder rules, 0600 from creation, a live agent's socket is
  never replaced), or inherited from systemd/launchd.
- Every connection's peer uid must equal ours (SO_PEERCRED/getpeereid), else it is closed unread.
- A frame over its operation's cap (``protocol.request_cap``), or one that stalls half-read for
  ``FRAME_TIMEOUT``, closes that connection. A frame that is not a valid request gets a
  ``bad_request`` reply and the connection stays usable. Nothing a client sends can stop the server.
- Memory is bounded across connections (``_budget``): a large frame is buffered only once the
  process-wide budget grants its length; a peer that leaves a reply untaken is read no further
  and is closed after ``REPLY_TIMEOUT``.
- Connections are bounded too: one idle for ``connection_timeout`` is closed, and at
  ``MAX_CONNECTIONS`` the one idle the longest makes way for the newcomer (logged), so that
  ``lock``, ``status`` and the tray always get through.
- SIGHUP calls ``on_reload`` (the daemon re-reads config.toml) and the agent keeps serving.
- SIGTERM (or a ``Stop`` request) stops accepting, lets requests in flight finish (bounded), tells
  watchers, drops the key, and removes the socket if this process created it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec

from nomyo_agent import _systemd
from nomyo_agent import protocol as p
from nomyo_agent._bind import Bound, bind_socket
from nomyo_agent._budget import ByteBudget
from nomyo_agent._dispatch import Dispatcher, Work, attempt
from nomyo_agent._peer import peer_of
from nomyo_agent._secret import wipe
from nomyo_agent._state import AgentState, Peer
from nomyo_agent._workers import (
    WRITE_SLICE,
    CryptoPool,
    decode_request,
    frame_parts,
    reply_estimate,
)
from nomyo_agent.errors import BadRequestError, InternalError

__all__ = ["AgentServer", "bind_socket"]

log = logging.getLogger("nomyo_agent")

FRAME_TIMEOUT = 30.0  # seconds to finish a frame once its header arrived
REPLY_TIMEOUT = 30.0  # seconds a peer may leave a reply over WRITE_HIGH untaken
DRAIN_TIMEOUT = 10.0  # seconds that requests in flight get at shutdown
MAX_CONNECTIONS = 512
WATCH_BACKLOG = 1024 * 1024  # bytes of unsent events before a watcher counts as stuck
WRITE_HIGH = 256 * 1024  # a write buffer above this stops reading from that peer
# Frames being received plus replies not taken, across all connections. It must hold the largest
# frame (an Open of a maximal answer); twice that lets one such answer open while others arrive.
MAX_BUFFERED_BYTES = 2 * p.MAX_FRAME_BYTES


_CRYPTO_OPS = frozenset({"seal", "open"})
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
        self._bound: Bound | None = None
        self._on_ready = on_ready
        self.on_reload = on_reload
        self._companions = companions  # e.g. the desktop-session watch; cancelled after the lock
        self._stop = asyncio.Event()
        self.connections: set[_Connection] = set()
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
        server = await self._listen(loop)
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
            server.close()
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
            if self._bound:
                self._bound.remove()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(sig)
            if self.on_reload is not None and hasattr(signal, "SIGHUP"):
                loop.remove_signal_handler(signal.SIGHUP)

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

    def make_room(self, newcomer: _Connection) -> bool:
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


class _Connection(asyncio.Protocol):
    """One client. Requests are answered strictly in order; cheap ones synchronously, as soon as
    their frame is complete (no task, no stream machinery: the hot path of seal and open), slow
    ones (unlock, generate, import) in a task while later frames wait their turn.

    Reading pauses while a large frame waits for its share of the memory budget, and while a
    reply sits untaken in the write buffer (the peer does not read: it gets nothing more read)."""

    def __init__(self, server: AgentServer, peer: Peer | None = None) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = peer  # known up front for a Windows pipe; else read from the socket
        self.frames = p.FrameReader(requests=True, admit=self._admit)
        self.pending: collections.deque[tuple[bytearray, int]] = collections.deque()
        self.busy = False
        self.watching = False
        self.timer: asyncio.TimerHandle | None = None
        self.reply_timer: asyncio.TimerHandle | None = None
        self.last_active = 0.0  # time.monotonic() of the last byte in or reply out
        self.reserved = 0  # budget bytes granted for the frame being received
        self.awaiting_budget = 0  # bytes this connection queued for, 0 when not queued
        self.reply_charge = 0  # budget bytes charged for an untaken reply
        # A large reply's slices not yet handed to the transport (see _send).
        self.outgoing: collections.deque[bytes | memoryview] = collections.deque()
        self._reading = True

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server, state = self.server, self.server.state
        if self.peer is None:  # a Unix socket: the kernel tells who is there
            if sys.platform == "win32":
                raise InternalError("a pipe connection must come with its peer")
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
        if server.stopping or not server.make_room(self):
            transport.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.last_active = time.monotonic()
        state.counters.connections += 1
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.crypto.cancel(self)
        self.server.state.watchers.discard(self._push)
        self._disarm()
        budget = self.server.budget
        budget.cancel(self)
        for _, share in self.pending:
            budget.release(share)
        self.pending.clear()
        self.outgoing.clear()
        if self.reserved:
            budget.release(self.reserved)
            self.reserved = 0
        self._drained()

    def data_received(self, data: bytes) -> None:
        if self.watching or self.transport is None or self.transport.is_closing():
            return  # a watcher has nothing to say; anything it sends is ignored
        self.last_active = time.monotonic()
        self._feed(data)

    def pause_writing(self) -> None:
        # The peer is not taking its replies: charge what waits for it, read nothing more from
        # it, and give it REPLY_TIMEOUT to start reading.
        if self.transport is None or self.reply_charge:
            return
        self.reply_charge = self.transport.get_write_buffer_size()
        self.reply_charge += sum(len(piece) for piece in self.outgoing)
        self.server.budget.charge(self.reply_charge)
        self._set_reading()
        loop = asyncio.get_running_loop()
        self.reply_timer = loop.call_later(REPLY_TIMEOUT, self._reply_stalled)

    def resume_writing(self) -> None:
        self._drained()
        if self.transport is not None and not self.transport.is_closing():
            self.last_active = time.monotonic()
            self._write_out()
            self._set_reading()
            self._pump()

    # --- frames and the memory budget ------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            for body in self.frames.feed(data):
                share, self.reserved = self.reserved, 0
                self.pending.append((body, share))
        except p.FrameTooLarge as exc:
            log.warning("closed a connection: %s", exc)
            transport.abort()
            return
        # Only a started, admitted frame has a deadline: an idle connection between frames is
        # legitimate, and one queued for the budget is waiting for others, not stalling.
        if self.frames.pending and not self.awaiting_budget:
            if self.timer is None:
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(FRAME_TIMEOUT, self._stalled)
        else:
            self._disarm()
        self._pump()

    def _admit(self, length: int) -> bool:
        """FrameReader's question: may a large frame's body be buffered now?"""
        if self.reserved:
            return True  # granted while queued
        if self.awaiting_budget:
            return False
        budget = self.server.budget
        if budget.try_take(length):
            self.reserved = length
            return True
        self.awaiting_budget = length
        budget.wait(self, length, self._granted)
        self._set_reading()
        return False

    def _granted(self) -> None:
        self.reserved, self.awaiting_budget = self.awaiting_budget, 0
        if self.transport is None or self.transport.is_closing():
            return
        self._set_reading()
        # Called from inside another connection's callback: continue on our own turn.
        asyncio.get_running_loop().call_soon(self._feed, b"")

    def _set_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want = not (self.awaiting_budget or self.reply_charge)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _drained(self) -> None:
        if self.reply_timer is not None:
            self.reply_timer.cancel()
            self.reply_timer = None
        if self.reply_charge:
            charge, self.reply_charge = self.reply_charge, 0
            self.server.budget.release(charge)

    @property
    def idle(self) -> bool:
        """Nothing in flight either way: closing it loses no request and no reply."""
        transport = self.transport
        return (
            not self.busy
            and not self.watching
            and not self.pending
            and not self.frames.pending
            and not self.awaiting_budget
            and not self.outgoing
            and (transport is None or transport.get_write_buffer_size() == 0)
        )

    # --- requests -------------------------------------------------------------------

    def _stalled(self) -> None:
        log.warning("closed a connection that stalled mid-frame")
        if self.transport:
            self.transport.abort()

    def _reply_stalled(self) -> None:
        self.reply_timer = None
        log.warning("closed a connection that left its reply unread for %.0f s", REPLY_TIMEOUT)
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
        while self.pending and not self.busy and not self.reply_charge and not self.outgoing:
            if transport.is_closing():
                return
            if server.crypto.full and p.op_of(self.pending[0][0][:64]) in _CRYPTO_OPS:
                server.crypto.wait(self, self._pump)
                return
            body, share = self.pending.popleft()
            try:
                request, viewed = decode_request(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                server.state.counters.errors += 1
                self._done(body, share)
                self._send(BadRequestError(f"invalid request: {exc}").to_reply())
                continue
            if isinstance(request, p.Watch):
                self._done(body, share)
                self._start_watch()
                return
            if isinstance(request, p.Hello) and request.pinentry is not None:
                self.peer = dataclasses.replace(self.peer, where=request.pinentry)
            if server.dispatcher.immediate(request, self.peer):
                # The request holds its own copy of every field (unless a large payload is a view
                # into the frame): the frame can go first.
                if not viewed:
                    wipe(body)
                started = server.dispatcher.start_now(request, self.peer)
                if isinstance(started, Work) and server.crypto.take_inline(started):
                    started = server.dispatcher.record(started, attempt(started.run))
                elif isinstance(started, Work):  # a seal or open, to the workers
                    # Work in flight holds its request and will make a reply: both count
                    # against the budget until it is done, so that reading cannot run ahead
                    # of the workers (the reply, if left unread, is charged as any other).
                    held = share + reply_estimate(started.size)
                    server.budget.charge(held - share)
                    self.busy = True  # replies go out in request order
                    server.begin_request()
                    server.crypto.submit(
                        started,
                        functools.partial(self._worked, started, held),
                        wipe_after=body if viewed else None,
                    )
                    continue
                self._done(body, share)
                self._send(started)
                if isinstance(request, p.Stop):
                    server.request_stop()
                continue
            self.busy = True
            server.track(asyncio.ensure_future(self._slow(request, body, share)))

    def _worked(self, work: Work, held: int, outcome: p.Response | Exception) -> None:
        self.server.end_request()
        self.server.budget.release(held)
        self.busy = False
        self._send(self.server.dispatcher.record(work, outcome))
        self._pump()

    def _done(self, body: bytearray, share: int) -> None:
        wipe(body)  # it may hold a passphrase or a PEM
        if share:
            self.server.budget.release(share)

    async def _slow(self, request: p.Request, body: bytearray, share: int) -> None:
        assert self.peer is not None
        self.server.begin_request()
        try:
            reply = await self.server.dispatcher(request, self.peer)
        finally:
            self.server.end_request()
            self._done(body, share)
            self.busy = False
        self._send(reply)
        self._pump()

    def _send(self, reply: p.Response) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                parts = frame_parts(reply)
            except p.FrameTooLarge as exc:  # cannot happen within the request caps; say so
                log.warning("could not send a reply: %s", exc)
                parts = [p.encode_frame(InternalError("the reply is too large to send").to_reply())]
            if len(parts) == 1:
                self.transport.write(parts[0])
            else:
                # A large payload goes out a slice at a time, each as the transport's buffer
                # drains (resume_writing): the transport would copy all of it into its buffer
                # at once, on the event loop, holding the GIL for as long as that takes.
                for part in parts:
                    view = memoryview(part)
                    self.outgoing.extend(
                        view[i : i + WRITE_SLICE] for i in range(0, len(view), WRITE_SLICE)
                    )
                self._write_out()
            self.last_active = time.monotonic()

    def _write_out(self) -> None:
        """Hand the transport slices of the reply until its buffer is over its high-water mark
        (it then calls pause_writing, and resume_writing once drained)."""
        transport = self.transport
        while self.outgoing and transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() > WRITE_HIGH:
                return
            transport.write(self.outgoing.popleft())

    # --- watch -------------------------------------------------------------------

    def _start_watch(self) -> None:
        self.watching = True
        for body, share in self.pending:
            self._done(body, share)
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
