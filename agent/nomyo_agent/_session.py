"""Following the desktop session: lock on screen lock, before suspend and at session end.

Linux only, through D-Bus (jeepney, found through ``DBUS_SESSION_BUS_ADDRESS`` and
``DBUS_SYSTEM_BUS_ADDRESS`` as every D-Bus library does). What locks, by ``lock_on`` setting:

- ``"screen"``: logind's ``Lock`` signal or ``LockedHint`` turning true on one of our uid's
  sessions, ``ActiveChanged(true)`` from ``org.freedesktop.ScreenSaver`` or
  ``org.gnome.ScreenSaver`` on the session bus, one of our sessions removed by logind, and the
  session bus going away (the session ended).
- ``"suspend"``: logind's ``PrepareForSleep(true)``. A ``delay`` inhibitor is taken at start, so
  logind waits (up to its ``InhibitDelayMaxSec``) until the key is dropped; it is released right
  after, and taken again on ``PrepareForSleep(false)`` for the next sleep.

Rules: the decision (``_session_policy.classify``) is pure and tested alone, and what is asked of
D-Bus is ``_logind``'s; this module only reads buses and calls ``AgentState.lock`` on the event
loop, so a lock never races a seal. A bus that cannot be reached is reported in status and the
log, never fatal: the agent serves on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nomyo_agent._logind import CALL_TIMEOUT, LOGIN1, match_rules, our_sessions, take_inhibitor
from nomyo_agent._session_policy import Verdict, classify

if TYPE_CHECKING:
    from nomyo_agent._state import AgentState

__all__ = ["SessionWatch"]

log = logging.getLogger("nomyo_agent")


class SessionWatch:
    """Watches the system and session buses for the events in ``lock_on`` and locks ``state``.

    ``notes`` says, per bus, what is being watched or why not: status shows it.
    """

    def __init__(self, state: AgentState, lock_on: Sequence[str]) -> None:
        self.state = state
        self.lock_on = frozenset(lock_on)
        self.notes: dict[str, str] = {}
        self.inhibitor: int | None = None
        self.sessions: frozenset[str] = frozenset()
        # Any user may send signals on the system bus, with any interface and path, and even
        # address them to us: only those from logind's own connection count.
        self.logind: str | None = None

    def report(self) -> list[str]:
        if not self.lock_on:
            return ["off (lock_on = [])"]
        if not sys.platform.startswith("linux"):
            return [f"not watched on {sys.platform} (see docs/running.md)"]
        return [f"{bus}: {note}" for bus, note in sorted(self.notes.items())]

    async def run(self) -> None:
        """Watch until cancelled; the inhibitor is released on the way out."""
        if not self.lock_on or not sys.platform.startswith("linux"):
            return
        try:
            await asyncio.gather(self._watch("SYSTEM"), self._watch("SESSION"))
        finally:
            self.release()

    def release(self) -> None:
        fd, self.inhibitor = self.inhibitor, None
        if fd is not None:
            os.close(fd)

    # --- events --------------------------------------------------------------------------

    def apply(self, verdict: Verdict) -> None:
        """Act on one verdict, on the event loop (no seal can be half-way through)."""
        if verdict.action != "lock":
            return
        if self.state.lock(verdict.reason):
            log.info("locked: %s", verdict.reason.replace("_", " "))
        if verdict.reason == "suspend":
            # The key is gone (or was never there): let the machine sleep now.
            self.release()
            self.notes["system bus"] = self._system_note()

    def _system_note(self) -> str:
        parts = []
        if "screen" in self.lock_on:
            parts.append(f"logind, {len(self.sessions)} session(s) of ours")
        if "suspend" in self.lock_on:
            held = "held" if self.inhibitor is not None else "released until resume"
            parts.append(f"sleep delay inhibitor {held}")
        return "; ".join(parts) or "nothing to watch"

    # --- buses ---------------------------------------------------------------------------

    async def _watch(self, bus: str) -> None:
        from jeepney.bus_messages import message_bus  # noqa: PLC0415
        from jeepney.io.asyncio import DBusRouter, Proxy, open_dbus_connection  # noqa: PLC0415

        name = "system bus" if bus == "SYSTEM" else "session bus"
        rules = match_rules(self.lock_on, bus)
        if not rules:
            return
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                conn = await open_dbus_connection(bus)
        except (OSError, EOFError, KeyError, ValueError, TimeoutError) as exc:
            self.notes[name] = f"unreachable ({exc or type(exc).__name__})"
            log.warning("not following the desktop session on the %s: %s", name, exc)
            return
        try:
            async with DBusRouter(conn) as router:
                bus_proxy = Proxy(message_bus, router)
                for rule in rules:
                    async with asyncio.timeout(CALL_TIMEOUT):
                        await bus_proxy.AddMatch(rule)
                if bus == "SYSTEM":
                    await self._start_system(router)
                else:
                    self.notes[name] = "screensaver ActiveChanged"
        except Exception as exc:  # a bus that refuses our rules: the other bus watches on
            self.notes[name] = f"refused ({exc or type(exc).__name__})"
            log.warning("not following the desktop session on the %s: %s", name, exc)
            await conn.close()
            return
        try:
            await self._listen(conn, bus)
        finally:
            await conn.close()

    async def _start_system(self, router: Any) -> None:
        from jeepney.bus_messages import message_bus  # noqa: PLC0415
        from jeepney.io.asyncio import Proxy  # noqa: PLC0415

        notes: list[str] = []
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                (self.logind,) = await Proxy(message_bus, router).GetNameOwner(LOGIN1)
        except Exception as exc:  # no logind: nothing on this bus is trusted
            notes.append(f"no logind ({exc})")
        if "screen" in self.lock_on:
            try:
                self.sessions = await our_sessions(router)
            except Exception as exc:  # any D-Bus error: watch the rest
                notes.append(f"no logind sessions ({exc})")
        if "suspend" in self.lock_on:
            await self._rearm()
        self.notes["system bus"] = "; ".join([*notes, self._system_note()])

    async def _rearm(self) -> None:
        if self.inhibitor is not None:
            return
        try:
            self.inhibitor = await asyncio.to_thread(take_inhibitor)
        except Exception as exc:  # no logind, or refused: lock on the signal all the same
            log.warning("no sleep inhibitor (the key may outlive the start of sleep): %s", exc)

    async def _listen(self, conn: Any, bus: str) -> None:
        """Read signals until the bus goes away. Losing the session bus means the session
        ended: lock. Losing the system bus only stops the watch."""
        while True:
            try:
                msg = await conn.receive()
            except (OSError, EOFError, ValueError) as exc:
                name = "system bus" if bus == "SYSTEM" else "session bus"
                self.notes[name] = f"lost ({exc or type(exc).__name__})"
                if bus == "SESSION":
                    self.apply(Verdict("lock", "session_end"))
                return
            try:
                await self._handle(conn, msg, bus)
            except Exception:  # one odd message must not end the watch (and free the inhibitor)
                log.exception("ignored a D-Bus message the session watch could not handle")

    async def _handle(self, conn: Any, msg: Any, bus: str) -> None:
        from jeepney import HeaderFields, MatchRule, MessageType  # noqa: PLC0415
        from jeepney.io.asyncio import DBusRouter  # noqa: PLC0415

        if msg.header.message_type is not MessageType.signal:
            return
        head = msg.header.fields
        if bus == "SYSTEM" and (
            self.logind is None or head.get(HeaderFields.sender) != self.logind
        ):
            return
        verdict = classify(
            head.get(HeaderFields.interface),
            head.get(HeaderFields.member),
            head.get(HeaderFields.path),
            msg.body,
            sessions=self.sessions,
            lock_on=self.lock_on,
        )
        if verdict is None:
            return
        if verdict.action == "rearm":
            await self._rearm()
            self.notes["system bus"] = self._system_note()
        elif verdict.action == "refresh":
            # A method call needs a router, whose reader then takes the signals: keep the ones
            # that arrive meanwhile and handle them after, so that no Lock is lost.
            held: asyncio.Queue[Any] = asyncio.Queue(256)
            async with DBusRouter(conn) as router:
                with (
                    router.filter(MatchRule(type="signal"), queue=held),
                    contextlib.suppress(Exception),
                ):
                    self.sessions = await our_sessions(router)
            while not held.empty():
                await self._handle(conn, held.get_nowait(), bus)
        else:
            self.apply(verdict)
