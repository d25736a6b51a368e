"""One client connection: a frame pump between the socket and the dispatcher.

Rules:

- Every connection's peer uid must equal ours (SO_PEERCRED/getpeereid), else it is closed unread.
- A frame over its operation's cap (``protocol.request_cap``), or one that stalls half-read for
  ``FRAME_TIMEOUT``, closes that connection. A frame that is not a valid request gets a
  ``bad_request`` reply and the connection stays usable. Nothing a client sends can stop the server.
- The pump knows no request type: it decodes a frame, asks ``_dispatch.kind_of`` (watch? stop?)
  and ``Dispatcher.start`` what to do, and writes the reply. Replies go out in request order.
- Memory is bounded across connections (``_budget``): a large frame is buffered only once the
  process-wide budget grants its length; a peer that leaves a reply untaken is read no further
  and is closed after ``REPLY_TIMEOUT``. Every frame is wiped once decoded (it may hold a
  passphrase or a PEM; the dispatcher wipes the decoded copies), and so are the frames a closing
  connection leaves undecoded or half-read.
- A watcher whose unsent events pass ``WATCH_BACKLOG`` is dropped, rather than let a stuck tray
  grow the agent's memory.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Protocol

import msgspec

from nomyo_agent import protocol as p
from nomyo_agent._dispatch import Kind, Later, Work, attempt, kind_of, kind_of_op, peer_for
from nomyo_agent._peer import peer_of
from nomyo_agent._secret import wipe
from nomyo_agent._splice import WRITE_SLICE, decode_request, frame_parts, reply_estimate
from nomyo_agent.errors import BadRequestError, InternalError

if TYPE_CHECKING:
    from nomyo_agent._budget import ByteBudget
    from nomyo_agent._dispatch import Dispatcher
    from nomyo_agent._state import AgentState, Peer
    from nomyo_agent._workers import CryptoPool

__all__ = ["Connection", "Host"]

log = logging.getLogger("nomyo_agent")

FRAME_TIMEOUT = 30.0  # seconds to finish a frame once its header arrived
REPLY_TIMEOUT = 30.0  # seconds a peer may leave a reply over WRITE_HIGH untaken
WATCH_BACKLOG = 1024 * 1024  # bytes of unsent events before a watcher counts as stuck
WRITE_HIGH = 256 * 1024  # a write buffer above this stops reading from that peer


class Host(Protocol):
    """What a connection needs of the server that runs it (``_server.AgentServer``)."""

    dispatcher: Dispatcher
    state: AgentState
    budget: ByteBudget
    crypto: CryptoPool
    connections: set[Connection]

    @property
    def stopping(self) -> bool: ...

    def make_room(self, newcomer: Connection) -> bool: ...

    def track(self, task: asyncio.Future[None]) -> None: ...

    def begin_request(self) -> None: ...

    def end_request(self) -> None: ...

    def request_stop(self) -> None: ...


class Connection(asyncio.Protocol):
    """One client. Requests are answered strictly in order; cheap ones synchronously, as soon as
    their frame is complete (no task, no stream machinery: the hot path of seal and open), slow
    ones (unlock, generate, import) in a task while later frames wait their turn.

    Reading pauses while a large frame waits for its share of the memory budget, and while a
    reply sits untaken in the write buffer (the peer does not read: it gets nothing more read)."""

    def __init__(self, server: Host, peer: Peer | None = None) -> None:
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
        self.outgoing: collections.deque[bytes | bytearray | memoryview] = collections.deque()
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
        for body, share in self.pending:
            self._done(body, share)  # wiped: it was never decoded
        self.pending.clear()
        self.frames.discard()  # a half-read frame may hold a passphrase or a PEM too
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
        dispatcher = server.dispatcher
        while self.pending and not self.busy and not self.reply_charge and not self.outgoing:
            if transport.is_closing():
                return
            if server.crypto.full:
                upcoming = kind_of_op(p.op_of(self.pending[0][0][:64]))
                if upcoming is not None and upcoming.crypto:
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
            if not viewed:
                wipe(body)  # the request holds its own copy of every field
            # else a large payload is a view into the frame: it is wiped once the work is done.
            kind = kind_of(request)
            if kind.watch:
                self._done(body, share)
                self._start_watch()
                return
            self.peer = peer_for(request, self.peer)
            step = dispatcher.start(request, self.peer)
            if isinstance(step, Later):
                self.busy = True
                frame = body if viewed else None
                server.track(asyncio.ensure_future(self._later(step, kind, share, frame)))
                return
            if isinstance(step, Work) and server.crypto.take_inline(step):
                step = dispatcher.record(step, attempt(step.run))
            elif isinstance(step, Work):  # a seal or open, to the workers
                # Work in flight holds its request and will make a reply: both count against
                # the budget until it is done, so that reading cannot run ahead of the workers
                # (the reply, if left unread, is charged as any other).
                held = share + reply_estimate(step.size)
                server.budget.charge(held - share)
                self.busy = True  # replies go out in request order
                server.begin_request()
                server.crypto.submit(
                    step,
                    functools.partial(self._worked, step, held),
                    wipe_after=body if viewed else None,
                )
                return
            self._done(body, share)
            self._answer(step, kind)

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

    async def _later(
        self, step: Later, kind: Kind, share: int, frame: bytearray | None = None
    ) -> None:
        self.server.begin_request()
        try:
            reply = await step.run()
        finally:
            if frame is not None:
                wipe(frame)  # the request's payload was a view into it
            self.server.end_request()
            if share:
                self.server.budget.release(share)
            self.busy = False
        self._answer(reply, kind)
        self._pump()

    def _answer(self, reply: p.Response, kind: Kind) -> None:
        self._send(reply)
        if kind.stop:
            self.server.request_stop()

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
