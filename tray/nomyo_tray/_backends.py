"""pystray's backends and their quirks, worked around in one place.

Rules of this module:

- pystray is imported only by ``import_pystray``, never at module import: it needs a display at
  import time, and picks its backend then, from ``PYSTRAY_BACKEND``.
- Each workaround names the pystray behaviour it fixes and is applied to one icon right after
  pystray creates it; nothing here patches pystray globally except ``guard_notifications``,
  which wraps (never replaces the work of) the gtk backends' notifier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

__all__ = [
    "BACKENDS",
    "XORG_TILE",
    "TrayError",
    "XorgPump",
    "fix_xorg_clicks",
    "guard_notifications",
    "import_pystray",
    "xorg_redock",
    "xorg_repaint",
]

log = logging.getLogger("nomyo_tray")

BACKENDS = ("appindicator", "gtk", "xorg")  # pystray's own order of preference on Linux
XORG_TILE = (48, 48, 48)  # xorg cannot show alpha: the icon sits on a dark tile


class TrayError(Exception):
    """The tray cannot be shown (no display, no usable pystray backend)."""


def import_pystray(backend: str | None) -> ModuleType:
    """Import pystray with ``backend`` (or the first that loads); ``TrayError`` when none does.

    pystray picks its backend at import time from ``PYSTRAY_BACKEND``, and its automatic choice
    stops at the first failure (PyGObject without the Gtk typelib raises ``ValueError``), so we
    try each backend ourselves.
    """
    errors = []
    for name in (backend,) if backend else BACKENDS:
        os.environ["PYSTRAY_BACKEND"] = name
        for mod in [m for m in sys.modules if m == "pystray" or m.startswith("pystray.")]:
            del sys.modules[mod]  # a failed import may leave half a package behind
        try:
            import pystray  # noqa: PLC0415 - needs a display, so only here

            return cast(ModuleType, pystray)
        except Exception as exc:  # Xlib, gi and pystray raise anything at import time
            errors.append(f"{name}: {str(exc).strip() or type(exc).__name__}")
    raise TrayError("no tray backend could start (" + "; ".join(errors) + ")")


def fix_xorg_clicks(icon: Any) -> None:
    """Let pystray's xorg icon window receive clicks.

    pystray 0.19.5 creates it with ``ExposureMask | StructureNotifyMask`` only, so the X server
    never delivers ``ButtonPress`` and a click does nothing (pystray issue #151). Adding the mask
    after creation is all it takes; pystray already handles the event.
    """
    window, display = getattr(icon, "_window", None), getattr(icon, "_display", None)
    if window is None or display is None:
        return
    from Xlib import X  # type: ignore[import-untyped]  # noqa: PLC0415 - xorg only

    window.change_attributes(event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask)
    display.flush()


def guard_notifications() -> None:
    """Keep a broken notification service from killing the icon.

    pystray's gtk and appindicator backends connect to ``org.freedesktop.Notifications`` while
    starting, and die if D-Bus cannot start it (a daemon that crashes, e.g. dunst activated
    without a display). Notifications are a nicety: without them the tray still works.
    """
    try:
        from pystray._util import notify_dbus  # noqa: PLC0415 - gtk backends only
    except Exception:  # no gi: the backend in use has its own notifications
        return
    original = notify_dbus.Notifier
    if getattr(original, "nomyo_guarded", False):
        return

    class Guarded:
        nomyo_guarded = True

        def __init__(self) -> None:
            try:
                self._inner: Any = original()
            except Exception as exc:  # GLib.GError and friends
                log.warning("notifications are off: %s", str(exc).strip().splitlines()[0])
                self._inner = None

        def notify(self, title: str, message: str, icon: Any) -> None:
            if self._inner is not None:
                self._inner.notify(title, message, icon)

        def hide(self) -> None:
            if self._inner is not None:
                with contextlib.suppress(Exception):
                    self._inner.hide()

    notify_dbus.Notifier = Guarded


class XorgPump:
    """Run callables on pystray's xorg mainloop thread, so that no other thread touches X.

    pystray's xorg backend lets any thread call ``icon.icon = ...``: it sends a client message
    and flushes on the icon's own X connection, while the mainloop thread reads that same
    connection. With python-xlib 0.33 that sometimes hangs the mainloop for good inside a reply
    wait (seen in our tests: a state change that never reaches the screen, an icon that never
    docks). So we wake the mainloop through a second X connection of our own, and it runs the
    queued callables itself, where pystray calls straight through.
    """

    def __init__(self, icon: Any) -> None:
        from Xlib import X  # noqa: PLC0415 - xorg only
        from Xlib import display as xdisplay  # noqa: PLC0415

        self._x = X
        self._display = xdisplay.Display()
        self._atom = self._display.intern_atom("_NOMYO_TRAY_WAKE")
        self._window = self._display.create_resource_object("window", icon._window.id)
        self._pending: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # our connection, one sender at a time
        original = icon._message_handlers[X.ClientMessage]

        def on_client_message(event: Any) -> None:
            if event.client_type != self._atom:
                original(event)
                return
            while True:
                try:
                    job = self._pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    job()
                except Exception:  # one failed update must not end the icon's mainloop
                    log.exception("tray update failed")

        icon._message_handlers[X.ClientMessage] = on_client_message

    def call_soon(self, job: Callable[[], None]) -> None:
        from Xlib.protocol import event  # type: ignore[import-untyped]  # noqa: PLC0415

        self._pending.put(job)
        message = event.ClientMessage(
            window=self._window, client_type=self._atom, data=(32, [0, 0, 0, 0, 0])
        )
        with self._lock:
            self._window.send_event(message, event_mask=self._x.NoEventMask)
            self._display.flush()


def xorg_repaint(icon: Any) -> None:
    """Paint the icon's current image again (on the mainloop thread, ``XorgPump``).

    Seen in CI, not reproduced at will: the state changed, the mainloop ran pystray's icon
    update, and yet the screen kept the old image. Repainting from ``icon.icon`` on every dock
    check (2 s) makes a lost draw heal itself; it costs one small image upload per check.
    """
    if getattr(icon, "_window", None) is None or not icon.visible:
        return
    icon._icon_data = None  # rebuild from icon.icon, not from a possibly stale cache
    icon._draw()


def xorg_redock(icon: Any) -> bool:
    """Ask the tray to embed the icon again if it is not embedded; True when it asked.

    pystray requests docking once, when shown. A tray that misses that request (one that was
    still starting, or busy) leaves the icon undocked for good, and a panel restarted without a
    DestroyNotify reaching us does the same. Run on the mainloop thread (``XorgPump``).
    """
    window, display = getattr(icon, "_window", None), getattr(icon, "_display", None)
    if window is None or display is None or not icon.visible:
        return False
    if window.query_tree().parent.id != display.screen().root.id:
        return False  # embedded: its parent is the tray's socket window
    with contextlib.suppress(AssertionError):  # no tray at all right now: try again later
        icon._systray_manager = None
        icon._assert_docked()
        icon._draw()
    log.info("asked the system tray to dock the icon again")
    return True
