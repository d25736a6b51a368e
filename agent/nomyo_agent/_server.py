"""The agent's Unix-socket server: a thin asyncio adapter around ``Dispatcher``.

Rules:

- The socket's folder is 0700 and the socket 0600 from the moment it exists (bound under umask
  0177, never chmod()ed after bind). An flock on ``<socket>.lock`` held for the agent's life marks
  it live: a live agent's socket is never stolen, a dead one's is replaced.
- Every connection's peer uid must equal ours (SO_PEERCRED/getpeereid), else it is closed unread.
- A frame longer than ``MAX_FRAME_BYTES``, or one that stalls half-read for ``FRAME_TIMEOUT``,
  closes that connection. A frame that is not a valid request gets a ``bad_request`` reply and the
  connection stays usable. Nothing a client sends can stop the server.
- SIGTERM (or a ``Stop`` request) stops accepting, lets requests in flight finish (bounded), tells
  watchers, drops the key, and removes the socket if this process created it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import msgspec

from nomyo_agent import _systemd
from nomyo_agent import protocol as p
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
_SECRET_CARRYING = (p.Unlock, p.Generate, p.Import)


class AgentAlreadyRunning(AgentError):
    default_hint = "use that agent (`nomyo-agent status`), or stop it first: `nomyo-agent stop`"


class _Bound:
    """A socket this process bound itself, with the lock that proves it is live."""

    def __init__(self, sock: socket.socket, path: str, lock_fd: int) -> None:
        self.sock = sock
        self.path = path
        self.lock_fd = lock_fd
        self.inode = os.stat(path).st_ino

    def remove(self) -> None:
        """Unlink the socket, unless another agent has replaced it since."""
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        os.close(self.lock_fd)


def _private_dir(folder: Path) -> None:
    old = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise AgentError(
            f"{folder} is not a folder owned by you",
            hint="remove it, or choose another socket with --socket / NOMYO_AGENT_SOCK",
        )
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)


def bind_socket(path: str) -> _Bound:
    """Create the listening socket at ``path`` per this module's rules."""
    _private_dir(Path(path).parent)
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise AgentAlreadyRunning(f"an agent is already running at {path}") from None
    try:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise AgentError(
                    f"{path} exists and is not a socket", hint="remove it or choose another path"
                )
            os.unlink(path)  # we hold the lock, so whoever made it is gone
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        return _Bound(sock, path, lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise


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
        self._bound: _Bound | None = None
        self._on_ready = on_ready
        self._stop = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or a ``Stop`` request; then shut down cleanly."""
        sock = self._inherited
        if sock is None:
            self._bound = bind_socket(self.path)
            sock = self._bound.sock
        server = await asyncio.start_unix_server(self._handle, sock=sock)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
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
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0)  # let the handlers see their closed transports
            if self._bound:
                self._bound.remove()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            peer = peer_of(sock)
        except OSError:
            writer.close()
            return
        if peer.uid != os.getuid() or len(self._writers) >= MAX_CONNECTIONS or self._stop.is_set():
            if peer.uid != os.getuid():
                self.state.counters.rejected_peers += 1
                log.warning("refused a connection from uid %d (pid %d)", peer.uid, peer.pid)
            writer.close()
            return
        self.state.counters.connections += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug must cost one connection, never the agent
            log.exception("dropped a connection after an internal error")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            header = await reader.readexactly(p.HEADER.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        (length,) = p.HEADER.unpack(header)
        if length > p.MAX_FRAME_BYTES:
            log.warning("closed a connection that announced a %d-byte frame", length)
            return None
        try:
            return await asyncio.wait_for(reader.readexactly(length), FRAME_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        while not self._stop.is_set():
            body = await self._read_frame(reader)
            if body is None:
                return
            try:
                request = p.decode_request(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.state.counters.errors += 1
                await self._send(writer, BadRequestError(f"invalid request: {exc}").to_reply())
                continue
            if isinstance(request, p.Watch):
                await self._watch(reader, writer)
                return
            self._begin()
            try:
                reply = await self.dispatcher(request, peer)
            finally:
                self._end()
                if isinstance(request, _SECRET_CARRYING):
                    wipe(body)
            await self._send(writer, reply)
            if isinstance(request, p.Stop):
                self.request_stop()
                return

    def _begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: p.Response) -> None:
        writer.write(p.encode_frame(reply))
        await writer.drain()

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[p.StateEvent] = asyncio.Queue(maxsize=64)
        self.state.watchers.add(queue)
        closed = asyncio.ensure_future(reader.read(1))  # a watcher sends nothing; EOF = gone
        try:
            await self._send(writer, self.state.event("watch"))
            while True:
                got = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({got, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    got.cancel()
                    return
                event = got.result()
                await self._send(writer, event)
                if event.reason == "stopping":
                    return
        finally:
            closed.cancel()
            self.state.watchers.discard(queue)
