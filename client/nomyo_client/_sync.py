"""The blocking client for scripts: the async client, driven on a private event loop.

Rules of this module: no request logic of its own. One daemon thread per process runs one event
loop for every blocking client, so the pooled HTTP connections and the agent connection survive
between calls, all blocking clients share one agent connection (a script that makes a client
per request and never closes it holds one connection and one thread, not one of each per
client), and ``create`` works from any thread, including one that already runs an event loop
(where ``asyncio.run`` would fail). A forked child starts its own loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from nomyo_client._chat_completion import SecureChatCompletion

__all__ = ["LoopThread", "SyncSecureChatCompletion", "shared_loop"]

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


class SyncSecureChatCompletion:
    """Blocking twin of ``SecureChatCompletion`` for scripts; same arguments, same answers.

    Example::

        from nomyo_client import SyncSecureChatCompletion

        with SyncSecureChatCompletion(base_url="https://api.nomyo.ai") as client:
            response = client.create(model="Qwen/Qwen3-0.6B",
                                     messages=[{"role": "user", "content": "Hello"}])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runner = shared_loop()
        self._async = SecureChatCompletion(*args, **kwargs)
        self._closed = False

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def api_key(self) -> str | None:
        return self._async.api_key

    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """Blocking ``SecureChatCompletion.create``."""
        if self._closed:
            raise RuntimeError("this client is closed")
        return self._runner.run(self._async.create(model, messages, **kwargs))

    def close(self) -> None:
        """Close this client's connections (the shared loop thread keeps serving others)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter shutdown)
            self._runner.run(self._async.aclose())

    def __enter__(self) -> SyncSecureChatCompletion:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
