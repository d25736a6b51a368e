"""The tray icon itself: pystray rendering ``_view``'s decisions, threads running ``_link``'s calls.

Rules of this module:

- pystray is imported only inside ``TrayApp.run`` (it needs a display at import time).
- One watcher thread follows the agent (``_link.AgentLink.watch``: pushed events, no polling);
  when it goes away the icon shows "no agent" until it is back.
- Unlock, lock and start run in worker threads, one at a time, through ``_link``; their errors
  become notifications.
- Everything that knows pystray's backends' quirks lives in ``_backends``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from nomyo_agent import protocol as p
from nomyo_agent.errors import AgentError, PinentryCancelledError
from nomyo_tray import _icons, _view
from nomyo_tray._backends import (
    XORG_TILE,
    TrayError,
    XorgPump,
    fix_xorg_clicks,
    guard_notifications,
    import_pystray,
    xorg_redock,
    xorg_repaint,
)
from nomyo_tray._link import AgentLink
from nomyo_tray._view import Action, View

__all__ = ["TrayApp", "TrayError"]

log = logging.getLogger("nomyo_tray")

TICK = 10.0  # how often the "locks in ..." row is refreshed while unlocked
DOCK_CHECK = 2.0  # xorg: how often to check that the tray still embeds the icon (one X round trip)


class TrayApp:
    """The tray for the agent at ``socket`` (default: the usual socket path)."""

    def __init__(self, socket: str | None = None, backend: str | None = None) -> None:
        self.link = AgentLink(socket)
        self.backend = backend
        self._view = _view.no_agent()
        self._lock = threading.Lock()  # guards _view
        self._render_lock = threading.Lock()  # one render at a time, always of the latest view
        self._stop = threading.Event()
        self._wake = threading.Event()  # cut the reconnect wait short (after "Start agent")
        self._icon: Any = None
        self._pystray: ModuleType | None = None
        self._kind: _view.IconKind | None = None
        # Where icon calls run: the xorg mainloop thread (see XorgPump), else right here
        # (pystray's gtk backends marshal onto the GLib main loop themselves).
        self._post: Callable[[Callable[[], None]], None] = lambda job: job()

    # --- state -------------------------------------------------------------------------------

    @property
    def view(self) -> View:
        with self._lock:
            return self._view

    def _update(self, change: Callable[[View], View]) -> None:
        with self._lock:
            self._view = change(self._view)
        self._render()

    def _set(self, view: View) -> None:
        self._update(lambda v: dataclasses.replace(view, busy=v.busy))

    def _render(self) -> None:
        if self._icon is not None:
            self._post(self._render_now)

    def _render_now(self) -> None:
        """Show the current view. Several threads change it; each render reads the latest view
        under one lock, so the last render can never show an older state than the newest."""
        icon = self._icon
        with self._render_lock:
            view = self.view
            kind = _view.icon_kind(view)
            if kind is not self._kind:
                self._kind = kind
                icon.icon = _icons.render(kind, 64, self._tile())
                log.info("state: %s", kind.value)
            icon.title = _view.tooltip(view)
            icon.update_menu()

    def _tile(self) -> tuple[int, int, int] | None:
        return XORG_TILE if self._backend_name() == "xorg" else None

    def _backend_name(self) -> str:
        return type(self._icon).__module__.rsplit("._", 1)[-1] if self._icon is not None else ""

    # --- pystray -----------------------------------------------------------------------------

    def _menu_items(self) -> Iterator[Any]:
        assert self._pystray is not None
        item = self._pystray.MenuItem
        for row in _view.menu(self.view, time.monotonic()):
            if row.action is Action.QUIT:
                yield self._pystray.Menu.SEPARATOR
            yield item(
                row.text,
                self._handler(row.action),
                enabled=row.enabled,
                default=row.default,
            )

    def _handler(self, action: Action) -> Callable[[Any, Any], None]:
        def run(icon: Any, item: Any) -> None:
            self.perform(action)

        return run

    def run(self) -> None:
        """Show the icon and block until Quit (or ``stop()``)."""
        pystray = import_pystray(self.backend)
        self._pystray = pystray
        kind = _view.icon_kind(self.view)
        icon = pystray.Icon(
            "nomyo-agent",
            icon=_icons.render(kind, 64),
            title=_view.tooltip(self.view),
            menu=pystray.Menu(self._menu_items),
        )
        self._icon = icon
        if self._backend_name() in ("gtk", "appindicator"):
            guard_notifications()
        if self._backend_name() == "xorg":
            fix_xorg_clicks(icon)
            self._post = XorgPump(icon).call_soon
            icon.icon = _icons.render(kind, 64, XORG_TILE)
        self._kind = kind
        log.info(
            "backend %s (menu: %s, default action: %s, notifications: %s)",
            self._backend_name(), icon.HAS_MENU, icon.HAS_DEFAULT_ACTION, icon.HAS_NOTIFICATION,
        )  # fmt: skip
        try:
            icon.run(setup=self._setup)
        except Exception:
            # pystray's gtk backend tidies up over D-Bus on the way out, which fails when the
            # session is ending too (a closed bus); that is no reason to die with a traceback.
            if not self._stop.is_set():
                raise
            log.debug("error while stopping the icon", exc_info=True)

    def _setup(self, icon: Any) -> None:
        self._post(lambda: setattr(icon, "visible", True))
        for target in (self._watch_loop, self._tick_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        icon = self._icon
        if icon is not None:
            # posted: a signal handler may run while the mainloop thread is inside Xlib
            self._post(icon.stop)

    def _notify(self, notice: _view.Notice) -> None:
        log.info("notice: %s: %s", notice.title, notice.message)
        icon = self._icon
        if icon is not None and icon.HAS_NOTIFICATION:
            with contextlib.suppress(Exception):  # a missing notification daemon is no error
                icon.notify(notice.message, notice.title)

    # --- the agent ---------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        self.link.watch(
            self._stop,
            self._wake,
            on_status=lambda reply: self._set(_view.view_from_status(reply, time.monotonic())),
            on_event=self._on_event,
            on_lost=lambda: self._update(lambda v: View(connected=False, busy=v.busy)),
        )

    def _on_event(self, event: p.StateEvent) -> None:
        self._update(lambda v: _view.apply_event(v, event, time.monotonic()))
        notice = _view.notice_for(event)
        if notice is not None:
            self._notify(notice)

    def _tick_loop(self) -> None:
        ticks = 0
        while not self._stop.wait(DOCK_CHECK):
            ticks += 1
            if self._backend_name() == "xorg":
                self._post(self._redock)
            countdown = _view.icon_kind(self.view) is _view.IconKind.UNLOCKED
            if countdown and ticks % round(TICK / DOCK_CHECK) == 0:
                self._render()  # the "locks in ..." row counts down

    def _redock(self) -> None:
        if not xorg_redock(self._icon):
            xorg_repaint(self._icon)

    def perform(self, action: Action) -> None:
        """Start ``action`` in a worker thread (menu items and the left click land here)."""
        if action is Action.QUIT:
            self.stop()
            return
        jobs = {Action.UNLOCK: self.link.unlock, Action.LOCK: self.link.lock}
        jobs[Action.START_AGENT] = self._start_agent
        job = jobs.get(action)
        if job is None:
            return
        with self._lock:
            if self._view.busy is not None:
                return  # one at a time: a second click must not open a second pinentry
            self._view = dataclasses.replace(self._view, busy=action)
        threading.Thread(target=self._run_job, args=(action, job), daemon=True).start()

    def _run_job(self, action: Action, job: Callable[[], None]) -> None:
        self._render()
        try:
            job()
        except PinentryCancelledError:
            log.info("%s: cancelled", action.value)
        except AgentError as exc:
            log.warning("%s failed: %s", action.value, exc)
            hint = f" ({exc.hint})" if exc.hint else ""
            self._notify(_view.Notice(f"nomyo-agent: {action.value} failed", f"{exc}{hint}"))
        finally:
            self._update(lambda v: dataclasses.replace(v, busy=None))

    def _start_agent(self) -> None:
        self.link.start_agent()
        self._wake.set()  # look for it now, not after the reconnect wait
