"""Where a pinentry may draw: which program, on whose display or terminal, with what environment.

Rules of this module:

- The child's environment comes only from the asking process (``PinEntry.env``, filtered to the
  variables a pinentry needs) plus the agent's ``PATH`` and ``HOME``: a graphical pinentry must
  open on the display of whoever asked, not wherever the agent was started (a service manager
  has no ``DISPLAY``).
- A process that asks from a display only (the tray) never gets a terminal-only flavour.

No process is started here (``_pinentry`` does that), so clients and the tray import this to
describe where they are without the conversation's machinery.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Mapping

from nomyo_agent.protocol import PinEntry

__all__ = [
    "child_env",
    "default_program",
    "locale_of",
    "pinentry_env_from",
    "pinentry_here",
    "pinentry_on_display",
    "program_for",
]

# What a pinentry needs from the asking process: where to draw (X11, Wayland, a terminal), how
# to reach the session bus (pinentry-gnome3), and the language. NO_AT_BRIDGE keeps GTK from
# starting an accessibility bus when the user turned it off.
_PASSED_VARS = frozenset(
    {
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "DBUS_SESSION_BUS_ADDRESS",
        "XAUTHORITY",
        "XDG_RUNTIME_DIR",  # WAYLAND_DISPLAY is a name relative to it
        "TERM",
        "LANG",
        "GPG_TTY",
        "NO_AT_BRIDGE",
    }
)
_AGENT_VARS = ("PATH", "HOME")

_FALLBACKS = ("pinentry-gnome3", "pinentry-gtk-2", "pinentry-qt", "pinentry-curses", "pinentry-tty")
_TERMINAL_ONLY = ("pinentry-tty", "pinentry-curses")
# For an asker with a display and no terminal; gtk-2 first: gnome3 falls back to curses when its
# prompter cannot start, which without a terminal fails.
_GRAPHICAL = ("pinentry-gtk-2", "pinentry-qt", "pinentry-gnome3", "pinentry-fltk")


def default_program() -> str:
    """The platform's pinentry: ``pinentry-mac`` on macOS, else Debian's ``pinentry`` alternative.

    When that is not on ``PATH``, the first flavour found among the usual ones; when none is,
    the platform name anyway, so that the error names what to install.
    """
    preferred = "pinentry-mac" if sys.platform == "darwin" else "pinentry"
    for name in (preferred, *_FALLBACKS):
        found = shutil.which(name)
        if found:
            return found
    return preferred


def pinentry_env_from(environ: Mapping[str, str], tty: str | None) -> PinEntry:
    """Describe where the asking process can show a pinentry (its display, bus and terminal).

    ``tty`` defaults to the terminal on stdin, if stdin is one, else ``GPG_TTY``.
    """
    env = {k: v for k, v in environ.items() if k in _PASSED_VARS or k.startswith("LC_")}
    if tty is None:
        with contextlib.suppress(OSError):
            if os.isatty(0):
                tty = os.ttyname(0)
    if tty is None:
        tty = environ.get("GPG_TTY") or None
    return PinEntry(env=env, ttyname=tty)


def pinentry_here() -> PinEntry:
    """Where this process can show a pinentry: its environment and the first terminal among
    stdin, stderr and stdout (a command whose input is piped may still have a terminal)."""
    tty = None
    for fd in (0, 2, 1):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                tty = os.ttyname(fd)
                break
    return pinentry_env_from(os.environ, tty)


def pinentry_on_display(environ: Mapping[str, str]) -> PinEntry:
    """Where a graphical process (the tray) asks: its display only, never the terminal it was
    started from (``GPG_TTY`` and the tty on stdin are left out)."""
    where = pinentry_env_from(environ, None)
    return PinEntry(env={k: v for k, v in where.env.items() if k != "GPG_TTY"}, ttyname=None)


def program_for(program: str, where: PinEntry) -> str:
    """``program``, unless it can only draw on a terminal and ``where`` has none but a display:
    then the first graphical flavour installed (a tray click must not fail, or draw elsewhere,
    because pinentry-tty suits the user's shells). ``/usr/bin/pinentry`` is judged by where its
    alternative points."""
    if where.ttyname or not (where.env.get("DISPLAY") or where.env.get("WAYLAND_DISPLAY")):
        return program
    found = shutil.which(program)
    if found is None or os.path.basename(os.path.realpath(found)) not in _TERMINAL_ONLY:
        return program
    for name in _GRAPHICAL:
        graphical = shutil.which(name)
        if graphical:
            return graphical
    return program


def child_env(where: PinEntry) -> dict[str, str]:
    env = {k: v for k, v in where.env.items() if k in _PASSED_VARS or k.startswith("LC_")}
    for key in _AGENT_VARS:
        if key in os.environ:
            env[key] = os.environ[key]
    if "XDG_RUNTIME_DIR" not in env and "XDG_RUNTIME_DIR" in os.environ:
        env["XDG_RUNTIME_DIR"] = os.environ["XDG_RUNTIME_DIR"]  # same user, same runtime dir
    return env


def locale_of(env: Mapping[str, str]) -> str | None:
    for key in ("LC_ALL", "LC_CTYPE", "LANG"):
        if env.get(key):
            return env[key]
    return None
