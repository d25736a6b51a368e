"""The audit log: one JSON line per state change, in the state folder (ARCHITECTURE.md, Files).

``$XDG_STATE_HOME/nomyo-agent/audit.log``, mode 0600: unlocks, locks (and why: on request, idle
timeout, maximum lifetime), identities generated or imported, router keys refused, and the first
use of the identity by each app after an unlock (``"event": "app"``; a nomyo-proxy token shows
as ``nomyo-proxy: NAME``). Never a secret, never a plaintext.

Rules of this module:

- Bounded: past ``max_bytes`` the file moves to ``audit.log.1`` (one generation kept), so a
  long-lived agent cannot fill the disk.
- What matters is kept: a refused router key can repeat thousands of times a minute (an app
  retrying against a router whose key changed), so ``pin_mismatch`` lines are coalesced: the
  first refusal of an (origin, key) pair is written at once, the repeats within ``interval``
  seconds become one line with a ``count`` when that window closes (checked on every event, and
  at stop). And when the file rotates, its state changes (everything but refusals, newest first,
  up to half the bound) are carried into the new file: refusals never push them out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from nomyo_agent import protocol as p

__all__ = ["AuditLog"]

MAX_BYTES = 1024 * 1024
INTERVAL = 300.0  # seconds over which repeated refusals of one key become one line
_MAX_WINDOWS = 256  # distinct (origin, key) pairs tracked at once; the oldest is flushed first
_REFUSAL = b'"event":"pin_mismatch"'
log = logging.getLogger("nomyo_agent")


class _Line(msgspec.Struct, omit_defaults=True):
    time: float
    event: str
    state: str
    fingerprint: str | None = None
    origin: str | None = None
    refused_fingerprint: str | None = None
    count: int = 1  # for pin_mismatch: refusals this line stands for
    since: float | None = None  # ... counted from this time on
    app: str | None = None


class _Window:
    def __init__(self, opened: float, line: _Line) -> None:
        self.opened = opened
        self.line = line  # the last refusal seen, for its state and fingerprints
        self.repeats = 0


class AuditLog:
    """A state watcher (``AgentState.watchers``) that appends each event to the file."""

    def __init__(
        self, path: Path, *, max_bytes: int | None = None, interval: float = INTERVAL
    ) -> None:
        self.path = path
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.interval = interval
        self._encoder = msgspec.json.Encoder()
        self._windows: dict[tuple[str | None, str | None], _Window] = {}

    def record(self, event: p.StateEvent, when: float) -> None:
        if event.reason == "stopping" and event.state is p.State.UNLOCKED:
            # An unlocked agent that stops announces it twice: first to release the watchers,
            # then when the lock drops the key. The second, with its true state, is the line.
            return
        line = _Line(
            time=round(when, 3),
            event=event.reason,
            state=event.state.value,
            fingerprint=event.fingerprint,
            origin=event.origin,
            refused_fingerprint=event.refused_fingerprint,
        )
        out = self._close_windows(when, everything=event.reason == "stopping")
        if event.reason == "pin_mismatch":
            key = (event.origin, event.refused_fingerprint)
            window = self._windows.get(key)
            if window is not None:
                window.repeats += 1
                window.line = line
            else:
                if len(self._windows) >= _MAX_WINDOWS:
                    out += self._flush(next(iter(self._windows)))
                self._windows[key] = _Window(when, line)
                out.append(line)
        else:
            out.append(line)
        if out:
            self._write(out)

    def _close_windows(self, now: float, *, everything: bool) -> list[_Line]:
        due = [k for k, w in self._windows.items() if everything or now - w.opened >= self.interval]
        return [line for key in due for line in self._flush(key)]

    def _flush(self, key: tuple[str | None, str | None]) -> list[_Line]:
        window = self._windows.pop(key)
        if not window.repeats:
            return []
        last = window.line
        summary = _Line(
            time=last.time,
            event=last.event,
            state=last.state,
            fingerprint=last.fingerprint,
            origin=last.origin,
            refused_fingerprint=last.refused_fingerprint,
            count=window.repeats,
            since=round(window.opened, 3),
        )
        return [summary]

    def record_app(self, app: str, when: float) -> None:
        """An app (an executable, or a nomyo-proxy token) used the identity first since unlock."""
        self._write([_Line(time=round(when, 3), event="app", state="unlocked", app=app)])

    def _write(self, lines: list[_Line]) -> None:
        data = b"".join(self._encoder.encode(line) + b"\n" for line in lines)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as fh:
                fh.write(data)
        except OSError as exc:  # a full disk must not stop the agent from locking
            log.warning("cannot write the audit log %s: %s", self.path, exc)

    def _rotate(self) -> None:
        """Move the file to ``.1`` and start the new one with its state changes (newest kept)."""
        old = self.path.read_bytes()
        kept: list[bytes] = []
        size = 0
        for line in reversed(old.splitlines(keepends=True)):
            if _REFUSAL in line or not line.endswith(b"\n"):
                continue
            if size + len(line) > self.max_bytes // 2:
                break
            kept.append(line)
            size += len(line)
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"".join(reversed(kept)))
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        os.replace(fresh, self.path)
