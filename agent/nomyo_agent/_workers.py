"""Seal and open on every core, without making a lone request pay for a thread hop.

Rules of this module:

- The work handed in is ``_dispatch.Work``: cryptography only (RSA-OAEP, AES-GCM, the package's
  JSON and base64), touching no agent state, so it may run on any thread. What it produced, or
  raised, is handed back to ``done`` on the event loop, where the dispatcher records it.
- At most ``2 * workers`` seals and opens are decoded and in flight at once: a connection
  whose next frame is one more waits (``wait``), its frame still undecoded and counted in the
  memory budget, and is woken when a worker frees up. Decoded work would otherwise pile up in
  memory faster than the workers turn it into replies.
- The first small request of a turn of the event loop, with no small one in flight, runs right
  there, inline: an idle agent answers as fast as before, with no thread hop and no extra turn.
  Large work in flight does not count: beside it, a small open that went to a worker waited for
  the GIL three times (to start, to finish, and the loop to answer), each behind the large
  work's slices, which made the p99 of small opens beside 8 MiB payloads about 9 ms agent-side
  where inline it is about 7. Anything else (a second request in the same turn, which means
  requests queue; anything while small ones are on the workers; a payload over
  ``INLINE_MAX_BYTES``) is collected until the end of the turn and goes to a pool of worker
  threads, one per core. RSA and AES release the GIL, so two cores
  open about twice as many packages a second, and a small open never waits behind a large one
  on the event loop.
- Large work runs on threads of its own, ``BULK_NICE`` below the agent's priority (Linux, where
  a thread's nice value is its own): the kernel then gives a core first to the event loop and
  to the apps waiting on small replies, and the bulk work takes what is left. Beside 8 MiB
  payloads, a small reply waited up to 2.7 ms (p99) for its app to get a core; at nice +10,
  0.4 ms. A lowered thread cannot be raised again without privilege, hence two pools.
- No payload of megabytes is copied on the event loop (``_splice``: requests decoded as views
  into their frame, which is wiped here on the worker once the work is done; replies framed
  around their payload). The worker seals and opens in slices, and its copies and base64 let
  go of the GIL (``_envelope``, ``package``, ``_buffers``), so it never holds the GIL for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from nomyo_agent import protocol as p
from nomyo_agent._dispatch import Work, attempt
from nomyo_agent._keyuse import INLINE_MAX_BYTES
from nomyo_agent._secret import wipe

__all__ = ["BULK_NICE", "INLINE_MAX_BYTES", "CryptoPool"]

BULK_NICE = 10  # how much lower the threads of large work run (Linux), see the module rules
SWITCH_INTERVAL = 0.001  # seconds, once there are workers: see _flush
LARGE_SWITCH_INTERVAL = 0.00025  # seconds, while large work is on them
Done = Callable[[p.Response | Exception], None]


def _lower_priority() -> None:
    """The start of a bulk worker: its thread runs ``BULK_NICE`` lower. Linux only: elsewhere
    ``setpriority`` would lower the whole process, event loop and all."""
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):  # lowering one's own thread needs no privilege
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, nice + BULK_NICE))


def _run(work: Work, frame: bytearray | None) -> p.Response | Exception:
    try:
        return attempt(work.run)
    finally:
        if frame is not None:
            wipe(frame)


class CryptoPool:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 2
        self._executor: ThreadPoolExecutor | None = None  # small work that queued
        self._bulk: ThreadPoolExecutor | None = None  # large work, at a lower priority
        self._batch: list[tuple[Work, Done, bytearray | None]] = []
        self.in_flight = 0  # on worker threads now
        self.large_in_flight = 0  # of which over INLINE_MAX_BYTES
        self._waiting: dict[object, Callable[[], None]] = {}  # connections, in arrival order
        self.offloaded = 0  # ever, for status and the tests
        self.inline = 0
        self._inline_this_turn = False
        self._switch = SWITCH_INTERVAL  # the process's interval once workers exist

    @property
    def full(self) -> bool:
        return self.in_flight + len(self._batch) >= 2 * self.workers

    def wait(self, owner: object, resume: Callable[[], None]) -> None:
        """Call ``resume()`` once the pool has room again (once per ``owner``)."""
        self._waiting[owner] = resume

    def cancel(self, owner: object) -> None:
        self._waiting.pop(owner, None)

    def _wake(self) -> None:
        while self._waiting and not self.full:
            owner = next(iter(self._waiting))
            self._waiting.pop(owner)()

    def take_inline(self, work: Work) -> bool:
        """Whether the caller should run ``work`` right now, on the event loop: the first small
        one of this turn, with no small one in flight or about to leave (large ones do not
        count). (The caller runs it; nothing to hand back.)"""
        if self._inline_this_turn or work.large:
            return False
        if self.in_flight > self.large_in_flight or any(
            not queued.large for queued, _, _ in self._batch
        ):  # small ones queue: join them
            return False
        self._inline_this_turn = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        self.inline += 1
        return True

    def submit(self, work: Work, done: Done, wipe_after: bytearray | None = None) -> None:
        """Run ``work`` on a worker at the end of this turn; ``done(outcome)`` is called on the
        event loop. ``wipe_after`` (the frame a view came from) is wiped on the worker once the
        work is done: zeroing megabytes there keeps the event loop free."""
        self._batch.append((work, done, wipe_after))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _next_turn(self) -> None:
        self._inline_this_turn = False

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        loop = asyncio.get_running_loop()
        if self._executor is None:
            # With workers, the event loop shares the GIL. A waiting thread asks the holder to
            # let go only after the switch interval (5 ms by default), so a small request's
            # reply could wait that long behind a large payload's slices: ask sooner, and
            # sooner still while large work runs (each of the loop's socket calls lets go of
            # the GIL, and waits up to that long to take it back). Measured beside 8 MiB
            # payloads: p99 8.3-9.3 ms at 1 ms, 7.6-8.3 at 0.25 ms, no better at 0.1 ms; 64
            # connections of small opens lost about 4% at 0.25 ms, so it is kept for large work.
            self._switch = min(sys.getswitchinterval(), SWITCH_INTERVAL)
            sys.setswitchinterval(self._switch)
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="nomyo-crypto")
            self._bulk = ThreadPoolExecutor(
                self.workers, thread_name_prefix="nomyo-bulk", initializer=_lower_priority
            )
        for work, done, frame in batch:
            large = work.large
            self.in_flight += 1
            self.large_in_flight += large
            if large and self.large_in_flight == 1:
                sys.setswitchinterval(min(self._switch, LARGE_SWITCH_INTERVAL))
            self.offloaded += 1
            executor = self._bulk if large else self._executor
            future = loop.run_in_executor(executor, _run, work, frame)
            future.add_done_callback(functools.partial(self._finished, done, large))

    def _finished(self, done: Done, large: bool, future: Future[p.Response | Exception]) -> None:
        self.in_flight -= 1
        self.large_in_flight -= large
        if large and not self.large_in_flight:
            sys.setswitchinterval(self._switch)
        done(future.result())
        self._wake()

    def shutdown(self) -> None:
        """Wait for the workers (the server has drained its requests first)."""
        for executor in (self._executor, self._bulk):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._bulk = None
