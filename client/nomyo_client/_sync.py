"""The blocking client for scripts: the async client, driven on the process's private event loop
(``_loop``).

Rules of this module: no request logic of its own. The loop thread keeps the pooled HTTP
connections and the agent connection between calls, and all blocking clients share one agent
connection (a script that makes a client per request and never closes it holds one connection
and one thread, not one of each per client).
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

from nomyo_client._chat_completion import SecureChatCompletion
from nomyo_client._loop import shared_loop

__all__ = ["SyncSecureChatCompletion"]


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
