"""Router key pins: trust on first use per origin, as ``known_hosts`` does for ssh.

Rules: an origin is ``origins.canonical_origin``'s form (callers canonicalise); the pin is the
key's fingerprint. A different key for a pinned origin is refused and remembered as
*pending*, so that ``pins accept ORIGIN`` can accept exactly the key the user was shown. The file
is JSON, written atomically with mode 0600; a corrupt file is an error, never an empty trust list.

Several agents may share one state folder (two sessions, a service and a manual ``serve``): every
change takes an flock on ``pins.json.lock``, re-reads the file and changes that, so no agent's
pin is lost; every check first notices (by a stat) a file another agent replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from nomyo_agent._files import atomic_write, exclusive_lock
from nomyo_agent.errors import (
    CorruptIdentityError,
    NotPinnedError,
    PinMismatchError,
)
from nomyo_agent.protocol import PinInfo

__all__ = ["PinStore"]


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    fingerprint: str
    first_seen: float
    pending_fingerprint: str | None = None


class PinStore:
    """The pins file, shared safely by every agent that uses the same state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = path.with_name(path.name + ".lock")
        self._pins: dict[str, _Record] = {}
        self._seen: tuple[int, int, int] | None = None
        self._refresh()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> None:
        """Re-read the file if another agent replaced it since we last read or wrote it."""
        stamp = self._stamp()
        if stamp is None or stamp != self._seen:
            self._pins = self._read()
            self._seen = stamp

    def _read(self) -> dict[str, _Record]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(data, type=dict[str, _Record])
        except msgspec.MsgspecError as exc:
            raise CorruptIdentityError(
                f"the router pins file {self.path} is corrupt: {exc}",
                hint=f"fix or remove {self.path} (all routers are then trusted anew on first use)",
            ) from exc

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, _Record]]:
        """Lock the file against other agents, re-read it, let the caller change it, write it:
        a change made by another agent since our last read is kept, never overwritten."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self._lock):
            self._seen = self._stamp()
            self._pins = self._read()
            before = msgspec.to_builtins(self._pins)
            yield self._pins
            after = msgspec.to_builtins(self._pins)
            if after != before:
                atomic_write(self.path, json.dumps(after, indent=1, sort_keys=True).encode())
                self._seen = self._stamp()

    def known(self, origin: str, fingerprint: str) -> bool:
        """Whether ``fingerprint`` is pinned for ``origin`` now: one stat, no lock, no write
        (the seal's hot path, run on the event loop; ``check`` does the rest on a thread)."""
        self._refresh()
        record = self._pins.get(origin)
        return record is not None and record.fingerprint == fingerprint

    def check(self, origin: str, fingerprint: str, now: float) -> str:
        """``"new"`` (pinned now) or ``"known"``; raises ``PinMismatchError`` for another key."""
        self._refresh()
        record = self._pins.get(origin)
        if record is not None and record.fingerprint == fingerprint:
            return "known"  # the hot path: one stat, no lock
        with self._update() as pins:
            record = pins.get(origin)
            if record is None:
                pins[origin] = _Record(fingerprint=fingerprint, first_seen=now)
                return "new"
            if record.fingerprint == fingerprint:
                return "known"
            record.pending_fingerprint = fingerprint
        raise PinMismatchError(
            f"the router key of {origin} changed: pinned {record.fingerprint[:16]}, "
            f"offered {fingerprint[:16]}",
            hint=f"if the router really rotated its key, run `nomyo-agent pins accept {origin}`",
            origin=origin,
            fingerprint=fingerprint,
        )

    def accept(self, origin: str, fingerprint: str | None, now: float) -> str:
        """Pin ``fingerprint`` (else the pending one) for ``origin``; returns what is pinned."""
        with self._update() as pins:
            record = pins.get(origin)
            chosen = fingerprint or (record.pending_fingerprint if record else None)
            if chosen is None:
                raise NotPinnedError(
                    f"no changed key is waiting for {origin}",
                    hint="a key is pinned on first use; `nomyo-agent pins list` shows the pins",
                )
            pins[origin] = _Record(fingerprint=chosen, first_seen=now)
        return chosen

    def forget(self, origin: str) -> None:
        with self._update() as pins:
            if pins.pop(origin, None) is None:
                raise NotPinnedError(f"{origin} is not pinned")

    def list(self) -> list[PinInfo]:
        self._refresh()
        return [
            PinInfo(
                origin=origin,
                fingerprint=r.fingerprint,
                first_seen=r.first_seen,
                pending_fingerprint=r.pending_fingerprint,
            )
            for origin, r in sorted(self._pins.items())
        ]
