"""What a desktop-session signal means for the agent: the pure half of ``_session``.

``classify`` takes one D-Bus signal's interface, member, path and body, with our uid's logind
sessions and the ``lock_on`` setting, and says whether it locks (and why), re-arms the sleep
inhibitor or refreshes the sessions. It reads no bus and imports no D-Bus library, so the tests
feed it tuples; ``_session`` reads the buses and acts on the verdicts.

Rules: any process may address a signal to the agent with any body, so every field is checked
for its type before it is trusted (the sender, logind's own connection, is ``_session``'s check).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "LOCK_REASONS",
    "LOGIN1",
    "MANAGER",
    "PROPS",
    "SAVERS",
    "SESSION",
    "Verdict",
    "classify",
]

LOCK_REASONS = ("session_lock", "locked_hint", "screensaver", "suspend", "session_end")
"""The ``StateEvent.reason`` (and audit log ``event``) of each lock the session watch causes."""

LOGIN1 = "org.freedesktop.login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"
PROPS = "org.freedesktop.DBus.Properties"
SAVERS = ("org.freedesktop.ScreenSaver", "org.gnome.ScreenSaver")


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
    if interface == MANAGER:
        if member == "PrepareForSleep" and suspend and body:
            return Verdict("lock", "suspend") if body[0] else Verdict("rearm")
        if member == "SessionRemoved" and screen and len(body) > 1 and body[1] in sessions:
            return Verdict("lock", "session_end")
        if member == "SessionNew" and screen:
            return Verdict("refresh")
        return None
    if not screen:
        return None
    if interface == SESSION and member == "Lock" and path in sessions:
        return Verdict("lock", "session_lock")
    if (
        interface == PROPS
        and member == "PropertiesChanged"
        and path in sessions
        and len(body) > 1
        and body[0] == SESSION
        and isinstance(body[1], dict)  # any process may address a signal to us, any body
    ):
        hint = body[1].get("LockedHint")
        if isinstance(hint, tuple) and len(hint) == 2 and hint[1] is True:
            return Verdict("lock", "locked_hint")
        return None
    if interface in SAVERS and member == "ActiveChanged" and body and body[0] is True:
        return Verdict("lock", "screensaver")
    return None
