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

Rules: the decision (``classify``) is pure and tested alone; the watchers only read buses and
call ``AgentState.lock`` on the event loop, so a lock never races a seal. A bus that cannot be
reached is reported in status and the log, never fatal: the agent serves on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nomyo_agent._state import AgentState

__all__ = ["LOCK_ON_CHOICES", "LOCK_REASONS", "SessionWatch", "Verdict", "classify"]

log = logging.getLogger("nomyo_agent")

LOCK_ON_CHOICES = ("screen", "suspend")
LOCK_REASONS = ("session_lock", "locked_hint", "screensaver", "suspend", "session_end")
"""The ``StateEvent.reason`` (and audit log ``event``) of each lock this module causes."""

LOGIN1 = "org.freedesktop.login1"
_MANAGER = "org.freedesktop.login1.Manager"
_SESSION = "org.freedesktop.login1.Session"
_PROPS = "org.freedesktop.DBus.Properties"
_SAVERS = ("org.freedesktop.ScreenSaver", "org.gnome.ScreenSaver")
_CALL_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one signal means: ``lock`` with a reason, ``rearm`` the sleep inhibitor, or
    ``refresh`` the list of our sessions."""

    action: str
    reason: str = ""


def classify(
    interface: str | None,
    member: str | None,
    path: str | None,
    body: tuple[Any, ...],
    *,
    sessions: frozenset[str],
    lock_on: frozenset[str],
) -> Verdict | None:
    """The meaning of one D-Bus signal for the agent, or None when it means nothing."""
    screen, suspend = "screen" in lock_on, "suspend" in lock_on
    if interface == _MANAGER:
        if member == "PrepareForSleep" and suspend and body:
            return Verdict("lock", "suspend") if body[0] else Verdict("rearm")
        if member == "SessionRemoved" and screen and len(body) > 1 and body[1] in sessions:
            return Verdict("lock", "session_end")
        if member == "SessionNew" and screen:
            return Verdict("refresh")
        return None
    if not screen:
        return None
    if interface == _SESSION and member == "Lock" and path in sessions:
        return Verdict("lock", "session_lock")
    if (
        interface == _PROPS
        and member == "PropertiesChanged"
        and path in sessions
        and len(body) > 1
        and body[0] == _SESSION
        and isinstance(body[1], dict)  # any process may address a signal to us, any body
    ):
        hint = body[1].get("LockedHint")
        if isinstance(hint, tuple) and len(hint) == 2 and hint[1] is True:
            return Verdict("lock", "locked_hint")
        return None
    if interface in _SAVERS and member == "ActiveChanged" and body and body[0] is True:
        return Verdict("lock", "screensaver")
    return None


def _rules(lock_on: frozenset[str], bus: str) -> list[Any]:
    from jeepney import MatchRule  # noqa: PLC0415 - Linux only, imported when watching starts

    rules = []
    if bus == "SYSTEM":
        if "suspend" in lock_on:
            rules.append(
                MatchRule(
                    type="signal", sender=LOGIN1, interface=_MANAGER, member="PrepareForSleep"
                )
            )
        if "screen" in lock_on:
            props = MatchRule(
                type="signal", sender=LOGIN1, interface=_PROPS, member="PropertiesChanged"
            )
            props.add_arg_condition(0, _SESSION)  # only the sessions' properties, not all
            rules += [
                MatchRule(
                    type="signal", sender=LOGIN1, interface=_MANAGER, member="SessionRemoved"
                ),
                MatchRule(type="signal", sender=LOGIN1, interface=_MANAGER, member="SessionNew"),
                MatchRule(type="signal", sender=LOGIN1, interface=_SESSION, member="Lock"),
                props,
            ]
    elif "screen" in lock_on:
        rules += [MatchRule(type="signal", interface=i, member="ActiveChanged") for i in _SAVERS]
    return rules


def _take_inhibitor() -> int:
    """A logind ``delay`` inhibitor for sleep: the fd that holds it (blocking; run in a thread).

    jeepney's asyncio connection cannot receive file descriptors, so this one call uses a
    short-lived blocking connection; the inhibitor belongs to the fd, not to the connection.
    """
    from jeepney import DBusAddress, new_method_call  # noqa: PLC0415
    from jeepney.io.blocking import open_dbus_connection  # noqa: PLC0415
    from jeepney.wrappers import unwrap_msg  # noqa: PLC0415

    manager = DBusAddress("/org/freedesktop/login1", bus_name=LOGIN1, interface=_MANAGER)
    call = new_method_call(
        manager,
        "Inhibit",
        "ssss",
        ("sleep", "nomyo-agent", "drop the identity's key from memory before sleep", "delay"),
    )
    with open_dbus_connection("SYSTEM", enable_fds=True) as conn:
        reply = conn.send_and_get_reply(call, timeout=_CALL_TIMEOUT)
    (fd,) = unwrap_msg(reply)
    return int(fd.to_raw_fd())


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
        rules = _rules(self.lock_on, bus)
        if not rules:
            return
        try:
            async with asyncio.timeout(_CALL_TIMEOUT):
                conn = await open_dbus_connection(bus)
        except (OSError, EOFError, KeyError, ValueError, TimeoutError) as exc:
            self.notes[name] = f"unreachable ({exc or type(exc).__name__})"
            log.warning("not following the desktop session on the %s: %s", name, exc)
            return
        try:
            async with DBusRouter(conn) as router:
                bus_proxy = Proxy(message_bus, router)
                for rule in rules:
                    async with asyncio.timeout(_CALL_TIMEOUT):
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
            async with asyncio.timeout(_CALL_TIMEOUT):
                (self.logind,) = await Proxy(message_bus, router).GetNameOwner(LOGIN1)
        except Exception as exc:  # no logind: nothing on this bus is trusted
            notes.append(f"no logind ({exc})")
        if "screen" in self.lock_on:
            try:
                self.sessions = await self._our_sessions(router)
            except Exception as exc:  # any D-Bus error: watch the rest
                notes.append(f"no logind sessions ({exc})")
        if "suspend" in self.lock_on:
            await self._rearm()
        self.notes["system bus"] = "; ".join([*notes, self._system_note()])

    async def _our_sessions(self, router: Any) -> frozenset[str]:
        from jeepney import DBusAddress, new_method_call  # noqa: PLC0415
        from jeepney.wrappers import unwrap_msg  # noqa: PLC0415

        manager = DBusAddress("/org/freedesktop/login1", bus_name=LOGIN1, interface=_MANAGER)
        async with asyncio.timeout(_CALL_TIMEOUT):
            reply = await router.send_and_get_reply(new_method_call(manager, "ListSessions"))
        (sessions,) = unwrap_msg(reply)
        uid = os.getuid()
        return frozenset(str(s[4]) for s in sessions if s[1] == uid)

    async def _rearm(self) -> None:
        if self.inhibitor is not None:
            return
        try:
            self.inhibitor = await asyncio.to_thread(_take_inhibitor)
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
                    self.sessions = await self._our_sessions(router)
            while not held.empty():
                await self._handle(conn, held.get_nowait(), bus)
        else:
            self.apply(verdict)
