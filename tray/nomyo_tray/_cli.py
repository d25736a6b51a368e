"""``nomyo-tray``: the command line of the tray icon, and its XDG autostart entry.

Rules: errors are one lower-case line on stderr (``nomyo-tray: error: ...``) plus a ``hint:``
line, exit status 1; usage errors exit 2 (argparse). pystray is not imported before the display
is known to exist, so ``--help`` and the autostart options work anywhere.

Exit status: 0 after Quit, 1 on an error (no display, no tray backend, a file not written), 2 on
bad usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from nomyo_agent._files import atomic_write
from nomyo_agent.paths import user_dirs

__all__ = ["autostart_path", "desktop_entry", "main"]

PROG = "nomyo-tray"
DESKTOP_FILE = "nomyo-tray.desktop"


# The [tray] extra: without it the tray cannot draw, and an autostart entry would fail at login.
TRAY_MODULES = {"pystray": "pystray", "PIL": "Pillow"}


def missing_extra() -> list[str]:
    """The distributions of the ``[tray]`` extra that are not importable here."""
    return [
        dist for module, dist in TRAY_MODULES.items() if importlib.util.find_spec(module) is None
    ]


def _fail_missing(missing: list[str]) -> int:
    return _fail(
        f"the tray needs the [tray] extra ({', '.join(missing)} not installed)",
        "reinstall with it from the checkout: `pipx install --force '.[tray]'`, or "
        "`pip install '.[tray]'` into the environment nomyo-agent is in",
    )


def _fail(message: str, hint: str = "") -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return 1


def autostart_path() -> Path:
    """``$XDG_CONFIG_HOME/autostart/nomyo-tray.desktop`` (default ``~/.config``; ``paths``)."""
    return user_dirs("linux").xdg_autostart / DESKTOP_FILE


def _exec_quote(arg: str) -> str:
    """Quote one argument of a desktop entry's ``Exec`` key (Desktop Entry spec)."""
    if arg and not any(c in arg for c in " \t\n\"'\\><~|&;$*?#()`"):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def _command(args: argparse.Namespace) -> list[str]:
    installed = shutil.which(PROG)
    argv = [installed] if installed else [sys.executable, "-m", "nomyo_tray"]
    if args.backend:
        argv += ["--backend", args.backend]
    if args.socket:
        argv += ["--socket", os.path.abspath(args.socket)]
    return argv


def desktop_entry(argv: Sequence[str]) -> str:
    """The text of the autostart entry that runs ``argv`` at login."""
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=nomyo-agent tray\n"
        "Comment=Shows whether the nomyo-agent identity is locked; lock and unlock it\n"
        f"Exec={' '.join(_exec_quote(a) for a in argv)}\n"
        "Icon=dialog-password\n"
        "Terminal=false\n"
        "Categories=Utility;Security;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def _install(args: argparse.Namespace) -> int:
    if sys.platform == "darwin":
        return _fail(
            "--install-autostart writes an XDG autostart entry, which macOS does not read",
            "add nomyo-tray under System Settings > General > Login Items (docs/tray.md)",
        )
    missing = missing_extra()
    if missing:
        return _fail_missing(missing)  # an entry that could only crash at every login
    path = autostart_path()
    try:
        atomic_write(path, desktop_entry(_command(args)).encode(), mode=0o644)
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror}", "check that folder's permissions")
    print(f"wrote {path}; the tray starts at your next login")
    return 0


def _uninstall() -> int:
    path = autostart_path()
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"no autostart entry at {path}")
        return 0
    except OSError as exc:
        return _fail(f"cannot remove {path}: {exc.strerror}", "check that folder's permissions")
    print(f"removed {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A tray icon showing whether the nomyo-agent identity is locked.",
    )
    parser.add_argument(
        "--backend",
        choices=("xorg", "gtk", "appindicator"),
        help="the pystray backend (default: the first of appindicator, gtk, xorg that loads)",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help="the agent's socket (default: as the agent)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--install-autostart", action="store_true", help="start the tray at login (XDG autostart)"
    )
    group.add_argument(
        "--uninstall-autostart", action="store_true", help="remove the autostart entry"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log state changes to stderr")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    return parser


def _version() -> str:
    from nomyo_agent import __version__  # noqa: PLC0415 - the one version of the distribution

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nomyo-tray``."""
    args = _parser().parse_args(argv)
    if args.install_autostart:
        return _install(args)
    if args.uninstall_autostart:
        return _uninstall()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"{PROG}: %(message)s",
        stream=sys.stderr,
    )
    # pystray logs a traceback each time it finds no tray to dock in (a panel not up yet at
    # login); the tray retries by itself, so that is noise unless asked for with -v.
    logging.getLogger("pystray").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    missing = missing_extra()
    if missing:
        return _fail_missing(missing)
    if sys.platform not in ("darwin", "win32") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        # One line: this is what a login script or a service manager's log shows.
        return _fail("no display (DISPLAY and WAYLAND_DISPLAY are unset): run it in your desktop")
    from nomyo_tray._app import TrayApp, TrayError  # noqa: PLC0415 - after the display check

    app = TrayApp(socket=args.socket, backend=args.backend)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app.run()
    except TrayError as exc:
        return _fail(str(exc), "install PyGObject and gir1.2-gtk-3.0, or use --backend xorg")
    except Exception as exc:  # a backend failing while it starts
        _fail(f"the tray icon failed: {str(exc).strip().splitlines()[0]}")
        sys.stderr.flush()
        os._exit(1)  # pystray's setup thread is not a daemon and would wait for ever
    return 0
