"""The process's private event loop for blocking calls (``SyncSecureChatCompletion``, the
seed's blocking ``SecureCompletionClient`` methods).

Rules of this module: one daemon thread per process runs one event loop for every blocking call,
so that what lives on a loop (the agent connection, pooled HTTP connections) survives between
calls and is shared, and a blocking call works from any thread, including one that already runs
an event loop (where ``asyncio.run`` would fail). A forked child starts its own loop thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "shared_loop"]

T = TypeVar("T")


class LoopThread:
    """An event loop on a daemon thread; ``run`` blocks until a coroutine is done there."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nomyo-client-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt while waiting: do not leave the request running unseen.
            future.cancel()
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


_shared: LoopThread | None = None
_shared_pid = 0
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process's loop thread for blocking clients, started on first use; never stopped."""
    global _shared, _shared_pid  # one per process, by design
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():  # threads do not survive a fork
            _shared, _shared_pid = LoopThread(), os.getpid()
        return _shared
