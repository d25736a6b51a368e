"""What the tray shows, as a pure function of what the agent said: no display, no I/O, no pystray.

Rules of this module:

- Input is a ``View`` (built from ``StatusReply``/``StateEvent`` or "no agent"); output is plain
  data: an ``IconKind``, a tooltip, ``MenuEntry`` rows with enabled flags, the left-click
  ``Action`` for a backend, and ``Notice``s. ``_app`` only renders these, so everything a user
  sees is tested here without a display.
- Time is passed in (``now``, monotonic seconds), never read here.
- It imports ``nomyo_agent.protocol`` only (msgspec): never ``_keys``, which pulls in
  ``cryptography``; the short fingerprint is formatted here the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

from nomyo_agent.protocol import ClientInfo, State, StateEvent, StatusReply, short_fingerprint

__all__ = [
    "Action",
    "IconKind",
    "MenuEntry",
    "Notice",
    "View",
    "apply_event",
    "click_action",
    "format_duration",
    "icon_kind",
    "menu",
    "no_agent",
    "notice_for",
    "tooltip",
    "view_from_status",
]

APP = "nomyo-agent"
RECENT_SHOWN = 3


class IconKind(enum.StrEnum):
    NO_AGENT = "no-agent"
    NO_IDENTITY = "no-identity"
    LOCKED = "locked"
    UNLOCKED = "unlocked"


class Action(enum.StrEnum):
    UNLOCK = "unlock"
    LOCK = "lock"
    START_AGENT = "start-agent"
    QUIT = "quit"
    NONE = "none"  # an information row


@dataclasses.dataclass(frozen=True)
class View:
    """What the tray knows. ``idle_left`` was measured at ``seen_at`` (monotonic seconds)."""

    connected: bool
    state: State | None = None
    fingerprint: str | None = None
    idle_timeout: float = 0.0
    idle_left: float | None = None
    seen_at: float = 0.0
    served_since_unlock: int = 0
    recent_clients: tuple[ClientInfo, ...] = ()
    busy: Action | None = None  # an unlock or lock in flight: no second one meanwhile


@dataclasses.dataclass(frozen=True)
class MenuEntry:
    text: str
    action: Action
    enabled: bool = True
    default: bool = False  # the left-click action where the backend has one


@dataclasses.dataclass(frozen=True)
class Notice:
    title: str
    message: str


def no_agent() -> View:
    return View(connected=False)


def view_from_status(status: StatusReply, now: float) -> View:
    return View(
        connected=True,
        state=status.state,
        fingerprint=status.fingerprint,
        idle_timeout=status.idle_timeout,
        idle_left=status.idle_left,
        seen_at=now,
        served_since_unlock=status.served_since_unlock,
        recent_clients=tuple(status.recent_clients),
    )


def apply_event(view: View, event: StateEvent, now: float) -> View:
    """The view after the agent pushed ``event`` (keeps what events do not carry)."""
    return dataclasses.replace(
        view,
        connected=True,
        state=event.state,
        fingerprint=event.fingerprint,
        idle_left=event.idle_left,
        seen_at=now,
        served_since_unlock=event.served_since_unlock,
        recent_clients=tuple(event.recent_clients),
    )


def icon_kind(view: View) -> IconKind:
    if not view.connected or view.state is None:
        return IconKind.NO_AGENT
    return {
        State.NO_IDENTITY: IconKind.NO_IDENTITY,
        State.LOCKED: IconKind.LOCKED,
        State.UNLOCKED: IconKind.UNLOCKED,
    }[view.state]


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``: rounded up, so "0 s" is never shown early."""
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s} s"
    m = math.ceil(s / 60)
    if m < 60:
        return f"{m} min"
    return f"{m // 60} h {m % 60:02d} min"


def idle_left_now(view: View, now: float) -> float | None:
    if view.idle_left is None:
        return None
    return max(0.0, view.idle_left - (now - view.seen_at))


def _state_line(view: View) -> str:
    kind = icon_kind(view)
    if kind is IconKind.NO_AGENT:
        return "no agent running"
    if kind is IconKind.NO_IDENTITY:
        return "no identity yet"
    fp = f" ({short_fingerprint(view.fingerprint)})" if view.fingerprint else ""
    return f"{kind.value}{fp}"


def tooltip(view: View) -> str:
    """``nomyo-agent: unlocked (3f2a:91c0:0d4e:77b1)``."""
    return f"{APP}: {_state_line(view)}"


def _recent(clients: Sequence[ClientInfo]) -> str:
    names: list[str] = []
    for c in clients:  # most recent first, one entry per executable
        if c.exe not in names:
            names.append(c.exe)
    return ", ".join(names[:RECENT_SHOWN]) + (", …" if len(names) > RECENT_SHOWN else "")


def menu(view: View, now: float) -> list[MenuEntry]:
    """The menu rows, top to bottom; the one marked ``default`` is the left-click action."""
    kind = icon_kind(view)
    click = _click(view)
    rows = [MenuEntry(_state_line(view).capitalize(), Action.NONE, enabled=False)]
    if kind is IconKind.NO_AGENT:
        rows.append(MenuEntry("Start agent", Action.START_AGENT, view.busy is None, True))
    else:
        unlocking = view.busy is Action.UNLOCK
        rows.append(
            MenuEntry(
                "Unlocking…" if unlocking else "Unlock…",
                Action.UNLOCK,
                enabled=kind is IconKind.LOCKED and view.busy is None,
                default=click is Action.UNLOCK,
            )
        )
        rows.append(
            MenuEntry(
                "Lock now",
                Action.LOCK,
                enabled=kind is IconKind.UNLOCKED and view.busy is None,
                default=click is Action.LOCK,
            )
        )
    if kind is IconKind.UNLOCKED:
        left = idle_left_now(view, now)
        if left is not None:
            rows.append(MenuEntry(f"Locks in {format_duration(left)} if idle", Action.NONE, False))
        elif view.idle_timeout <= 0:
            rows.append(MenuEntry("No idle lock", Action.NONE, False))
        served = view.served_since_unlock
        text = f"Served {served} request{'s' if served != 1 else ''} since unlock"
        if view.recent_clients:
            text += f": {_recent(view.recent_clients)}"
        rows.append(MenuEntry(text, Action.NONE, False))
    rows.append(MenuEntry("Quit", Action.QUIT))
    return rows


def _click(view: View) -> Action:
    if view.busy is not None:
        return Action.NONE
    return {
        IconKind.NO_AGENT: Action.START_AGENT,
        IconKind.NO_IDENTITY: Action.NONE,
        IconKind.LOCKED: Action.UNLOCK,
        IconKind.UNLOCKED: Action.LOCK,
    }[icon_kind(view)]


def click_action(view: View, *, has_menu: bool, has_default_action: bool) -> Action:
    """What a left click does on a backend with these capabilities.

    Where the backend has a default action (xorg, gtk, win32), the click unlocks when locked,
    locks when unlocked and starts the agent when none answers. Where it has only a menu
    (appindicator), the click opens the menu, whose first enabled row is that same action, so
    the answer is NONE. (``has_menu`` decides nothing today; it is here so the rule is complete.)
    """
    if not has_default_action:
        return Action.NONE
    return _click(view)


def notice_for(event: StateEvent) -> Notice | None:
    """A desktop notification for the events a user must hear about, else None."""
    if event.reason in ("idle_timeout", "max_lifetime"):
        why = "it was idle" if event.reason == "idle_timeout" else "its maximum lifetime ended"
        return Notice(f"{APP} locked", f"The identity was locked because {why}.")
    if event.reason == "pin_mismatch":
        origin = event.origin or "a router"
        return Notice(
            f"{APP}: router key changed",
            f"{origin} offered a different key than the one pinned, and was refused. "
            f"If the change is expected, accept it with: nomyo-agent pins accept {origin}",
        )
    return None
