"""The tray's link to the agent: the watch connection and the calls its menu makes.

Rules of this module:

- It knows no pystray and no view: what it hears goes to the callbacks ``_app`` passes, and
  the calls raise the agent's errors for ``_app`` to show.
- ``watch`` holds one ``Watch`` connection; the agent pushes a ``StateEvent`` on every change, so
  there is no polling while it runs. When it goes away, ``on_lost`` is called and it reconnects
  with a short backoff (at most ``RECONNECT_MAX`` apart: one connect attempt, no storm), so a
  restarted agent is picked up within a second; setting ``wake`` cuts the wait short.
- Unlock, lock and start each open their own connection (or process), never the watcher's.
  Unlock sends only *where* to show pinentry (this process's display and bus, never a terminal):
  the agent runs pinentry, so the passphrase never passes through the tray.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable

from nomyo_agent import protocol as p
from nomyo_agent._launch import agent_command
from nomyo_agent._pinentry import pinentry_on_display
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import AgentError, StartFailedError, UnsafeSocketError, from_reply
from nomyo_agent.paths import socket_path

__all__ = ["RECONNECT_MAX", "UNLOCK_TIMEOUT", "AgentLink"]

log = logging.getLogger("nomyo_tray")

RECONNECT_MAX = 1.0  # seconds between attempts while no agent answers
UNLOCK_TIMEOUT = 960.0  # the agent asks up to 3 times, 300 s each, with delays between


class AgentLink:
    """The agent at ``socket`` (default: the usual socket path), as the tray talks to it."""

    def __init__(self, socket: str | None = None) -> None:
        self.explicit_socket = socket
        self.path = socket_path(socket)

    def watch(
        self,
        stop: threading.Event,
        wake: threading.Event,
        *,
        on_status: Callable[[p.StatusReply], None],
        on_event: Callable[[p.StateEvent], None],
        on_lost: Callable[[], None],
    ) -> None:
        """Follow the agent's state until ``stop`` is set, reconnecting while it is away."""
        delay = 0.1
        while not stop.is_set():
            try:
                with AgentConnection.open(self.path, timeout=10) as conn:
                    on_status(conn.call(p.Status(), p.StatusReply))
                    delay = 0.1
                    for event in conn.watch():
                        on_event(event)
            except UnsafeSocketError as exc:
                # Not a missing agent but someone else's socket (or a loose folder): say so.
                log.warning("%s (hint: %s)", exc, exc.hint)
            except AgentError as exc:
                log.debug("watch: %s", exc)
            if stop.is_set():
                return
            on_lost()
            wake.wait(delay)
            wake.clear()
            delay = min(delay * 2, RECONNECT_MAX)

    def call(self, request: p.Request, timeout: float) -> None:
        with AgentConnection.open(self.path, timeout=timeout) as conn:
            reply = conn.request(request)
        if isinstance(reply, p.Error):
            raise from_reply(reply)

    def unlock(self) -> None:
        # The display only: a tray started from a shell must not draw pinentry in that shell.
        self.call(p.Unlock(pinentry=pinentry_on_display(os.environ)), UNLOCK_TIMEOUT)

    def lock(self) -> None:
        self.call(p.Lock(), 30)

    def start_agent(self) -> None:
        argv = agent_command()  # nothing from the tray's working directory on sys.path
        if self.explicit_socket:
            argv += ["--socket", os.path.abspath(self.path)]
        done = subprocess.run(
            [*argv, "start"], capture_output=True, text=True, timeout=60, check=False,
            stdin=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip
        if done.returncode != 0:
            # The CLI prints "nomyo-agent: <error>" then "hint: ..."; a crash ends in the error.
            lines = done.stderr.strip().splitlines() or ["no output"]
            hint = None
            if len(lines) > 1 and lines[-1].startswith("hint: "):
                hint = lines.pop().removeprefix("hint: ")
            error = lines[-1].removeprefix("nomyo-agent: ")
            raise StartFailedError(f"nomyo-agent start failed: {error}", hint=hint)
