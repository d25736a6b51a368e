"""The audit log: one JSON line per state change, in the state folder (ARCHITECTURE.md, Files).

``$XDG_STATE_HOME/nomyo-agent/audit.log``, mode 0600: unlocks, locks (and why: on request, idle
timeout, maximum lifetime), identities generated or imported, router keys refused, and the first
use of the identity by each app after an unlock (``"event": "app"``; a nomyo-proxy token shows
as ``nomyo-proxy: NAME``). Never a
secret, never a plaintext. It is bounded: past ``MAX_BYTES`` it moves to ``audit.log.1`` (one
generation kept), so a long-lived agent cannot fill the disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from nomyo_agent import protocol as p

__all__ = ["AuditLog"]

MAX_BYTES = 1024 * 1024
log = logging.getLogger("nomyo_agent")


class _Line(msgspec.Struct, omit_defaults=True):
    time: float
    event: str
    state: str
    fingerprint: str | None = None
    origin: str | None = None
    app: str | None = None


class AuditLog:
    """A state watcher (``AgentState.watchers``) that appends each event to the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._encoder = msgspec.json.Encoder()

    def record(self, event: p.StateEvent, when: float) -> None:
        self._append(
            _Line(
                time=round(when, 3),
                event=event.reason,
                state=event.state.value,
                fingerprint=event.fingerprint,
                origin=event.origin,
            )
        )

    def record_app(self, app: str, when: float) -> None:
        """An app (an executable, or a nomyo-proxy token) used the identity first since unlock."""
        self._append(_Line(time=round(when, 3), event="app", state="unlocked", app=app))

    def _append(self, line: _Line) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > MAX_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as fh:
                fh.write(self._encoder.encode(line) + b"\n")
        except OSError as exc:  # a full disk must not stop the agent from locking
            log.warning("cannot write the audit log %s: %s", self.path, exc)
