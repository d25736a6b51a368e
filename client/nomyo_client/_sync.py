"""The blocking client for scripts: the async client, driven on a private event loop.

Rules of this module: no request logic of its own. A daemon thread runs one event loop for the
client's lifetime, so the pooled HTTP connections and the agent connection survive between
calls, and ``create`` works from any thread, including one that already runs an event loop
(where ``asyncio.run`` would fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from nomyo_client._chat_completion import SecureChatCompletion

__all__ = ["LoopThread", "SyncSecureChatCompletion"]

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


class SyncSecureChatCompletion:
    """Blocking twin of ``SecureChatCompletion`` for scripts; same arguments, same answers.

    Example::

        from nomyo_client import SyncSecureChatCompletion

        with SyncSecureChatCompletion(base_url="https://api.nomyo.ai") as client:
            response = client.create(model="Qwen/Qwen3-0.6B",
                                     messages=[{"role": "user", "content": "Hello"}])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runner = LoopThread()
        try:
            self._async = SecureChatCompletion(*args, **kwargs)
        except BaseException:
            self._runner.close()
            raise

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def api_key(self) -> str | None:
        return self._async.api_key

    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """Blocking ``SecureChatCompletion.create``."""
        return self._runner.run(self._async.create(model, messages, **kwargs))

    def close(self) -> None:
        """Close the connections and stop the private event loop."""
        try:
            with contextlib.suppress(RuntimeError):  # already closed
                self._runner.run(self._async.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncSecureChatCompletion:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
