"""nomyo-tray end to end: a real agent with a passphrase-protected identity in a real Secret
Service, the tray on Xvfb docked in trayer (pystray's xorg backend), a real pinentry-gtk-2 that
the agent opens on the tray's display, xdotool for the user's hands, screenshots for the eyes.

The icon is found by its pixels in the tray panel (never by window name), and its state is read
from its colours: blue padlock locked, green unlocked, red stroke no agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from PIL import Image

from nomyo_agent import protocol as p
from nomyo_tray._icons import COLORS, SLASH
from nomyo_tray._view import IconKind
from support.agent import RunningAgent
from support.desktop import Session, require_programs, stop_group
from support.keys import rsa_key
from support.waiting import wait_until
from support.x11 import TrayHost, XDisplay, find_color, start_trayer

PASSPHRASE = "pw"
PINENTRY = "/usr/bin/pinentry-gtk-2"
PANEL = (220, 218, 213)  # trayer's background
PINENTRY_WINDOW = "^nomyo-agent$"  # the agent's SETTITLE; the tray's own window says more

# nomyo-tray's main, with SIGUSR1 dumping every thread's stack (shown when a test fails)
TRAY_MAIN = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "from nomyo_tray._cli import main; sys.exit(main(sys.argv[1:]))"
)

pytestmark = pytest.mark.slow


def _near(color: tuple[int, int, int], tol: int = 40) -> Callable[[tuple[int, int, int]], bool]:
    return lambda c: max(abs(a - b) for a, b in zip(c, color, strict=True)) <= tol


def classify(panel: Image.Image) -> IconKind | None:
    """The state an icon in this tray panel shows, from its colours; None when there is none."""
    if find_color(panel, _near(SLASH))[0] > 10:
        return IconKind.NO_AGENT
    if find_color(panel, _near(COLORS[IconKind.UNLOCKED]))[0] > 20:
        return IconKind.UNLOCKED
    if find_color(panel, _near(COLORS[IconKind.LOCKED]))[0] > 20:
        return IconKind.LOCKED
    if find_color(panel, _near(COLORS[IconKind.NO_IDENTITY], 12))[0] > 20:
        return IconKind.NO_IDENTITY
    return None


@dataclass
class Tray:
    host: TrayHost
    proc: subprocess.Popen[bytes]
    log: Path

    def state(self, save_as: str | None = None) -> IconKind | None:
        return classify(self.host.shot(save_as))

    def wait_state(self, kind: IconKind, timeout: float = 10.0) -> float:
        """Wait until the icon shows ``kind``; returns how long that took."""
        start = time.monotonic()
        self._wait(f"the tray icon to show {kind.value}", lambda: self.state() is kind, timeout)
        return time.monotonic() - start

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        self._wait(f"{text!r} in the tray's log", lambda: text in self.log_text(), timeout)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        try:
            wait_until(what, check, timeout)
        except pytest.fail.Exception:
            self.host.shot("failed.png")
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGUSR1)  # every thread's stack, into the log
                time.sleep(0.5)
            print(f"tray log:\n{self.log_text()}\nscreenshots in {self.host.display.artifacts}")
            raise

    def click(self, button: str = "1") -> None:
        _, box = find_color(self.host.shot(), lambda c: not _near(PANEL, 30)(c))
        assert box is not None, "no icon in the tray panel"
        left, top, _, _ = self.host.region
        x, y = left + (box[0] + box[2]) // 2, top + (box[1] + box[3]) // 2
        self.host.display.xdotool("mousemove", str(x), str(y), "click", button)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def locked_agent(make_agent: Callable[..., RunningAgent]) -> RunningAgent:
    """An agent whose identity has a passphrase and whose pinentry is pinentry-gtk-2."""
    require_programs("pinentry-gtk-2")
    agent = make_agent(args=["--pinentry", PINENTRY])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=f"{PASSPHRASE}\n".encode())
    agent.cli("lock")  # a new identity starts unlocked
    assert agent.status().state is p.State.LOCKED
    return agent


@contextlib.contextmanager
def start_tray(
    host: TrayHost, desktop: Session, sock: str, backend: str = "xorg", stdin: int | None = None
) -> Iterator[Tray]:
    """The tray on ``host``'s display; ``stdin`` a terminal when it is started from a shell."""
    log = desktop.home / "tray.log"
    env = {**desktop.env, **host.display.env}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", TRAY_MAIN, "--backend", backend, "--socket", sock, "-v"],
            env=env, stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=fh, stderr=fh,
            start_new_session=True,
        )  # fmt: skip
    tray = Tray(host=host, proc=proc, log=log)
    try:
        yield tray
    finally:
        if proc.poll() is None:
            stop_group(proc)


@pytest.fixture
def tray(
    request: pytest.FixtureRequest,
    tray_host: TrayHost,
    desktop: Session,
    locked_agent: RunningAgent,
) -> Iterator[Tray]:
    """The tray on pystray's xorg backend (or the one given by indirect parametrization)."""
    backend = getattr(request, "param", "xorg")
    if backend != "xorg":
        require_gtk()
    with start_tray(tray_host, desktop, locked_agent.path, backend) as running:
        yield running


def require_gtk() -> None:
    """Fail loudly when PyGObject or the Gtk/AppIndicator typelibs are missing (./dev setup)."""
    code = (
        "import gi; gi.require_version('Gtk', '3.0'); "
        "gi.require_version('AyatanaAppIndicator3', '0.1')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        pytest.fail(
            "PyGObject with the Gtk 3 and AyatanaAppIndicator3 typelibs is needed: run "
            f"`./dev setup` (gir1.2-gtk-3.0, gir1.2-ayatanaappindicator3-0.1)\n{out.stderr}",
            pytrace=False,
        )


def pinentry_windows(tray: Tray) -> list[str]:
    return tray.host.display.windows_named(PINENTRY_WINDOW)


def type_into_pinentry(
    tray: Tray, text: str, previous: list[str] | None = None, screenshot: str | None = None
) -> None:
    """Wait for a pinentry window (a new one if ``previous`` is given), type, press Return."""
    old = set(previous or [])
    wait_until("a pinentry-gtk-2 window", lambda: bool(set(pinentry_windows(tray)) - old), 20)
    if screenshot:
        time.sleep(0.3)  # let GTK paint the dialog before the picture (for people, not asserts)
        tray.host.display.screenshot(screenshot)
    tray.host.display.xdotool("type", "--delay", "20", text)
    tray.host.display.xdotool("key", "Return")


@pytest.mark.parametrize("tray", ["xorg", "gtk"], indirect=True)
def test_icon_docks_click_unlocks_through_pinentry_and_cli_lock_shows_within_a_second(
    tray: Tray, locked_agent: RunningAgent
) -> None:
    tray.wait_state(IconKind.LOCKED)
    backend = tray.proc.args[tray.proc.args.index("--backend") + 1]  # type: ignore[union-attr]
    locked_shot = tray.host.shot(f"tray-{backend}-locked.png")

    # Left click = unlock; the agent opens pinentry-gtk-2 on the tray's display. A wrong
    # passphrase leaves it locked and the agent asks again; the right one unlocks.
    tray.click()
    type_into_pinentry(tray, "wrong", screenshot=f"screen-{backend}-pinentry.png")
    first = pinentry_windows(tray)
    assert locked_agent.status().state is p.State.LOCKED
    type_into_pinentry(tray, PASSPHRASE, previous=first)
    tray.wait_state(IconKind.UNLOCKED)
    assert locked_agent.status().state is p.State.UNLOCKED
    assert locked_agent.status().counters.failed_unlocks == 1
    unlocked_shot = tray.host.shot(f"tray-{backend}-unlocked.png")
    assert locked_shot.tobytes() != unlocked_shot.tobytes()
    tray.host.display.screenshot(f"screen-{backend}-unlocked.png")

    # Left click while unlocked = lock now.
    tray.click()
    tray.wait_state(IconKind.LOCKED, timeout=5)
    assert locked_agent.status().state is p.State.LOCKED

    # Changes made elsewhere reach the icon within a second (pushed, not polled).
    locked_agent.cli("unlock", "--passphrase-stdin", input=f"{PASSPHRASE}\n".encode())
    assert tray.wait_state(IconKind.UNLOCKED, timeout=5) < 1.0
    locked_agent.cli("lock")
    assert tray.wait_state(IconKind.LOCKED, timeout=5) < 1.0
    assert "failed" not in tray.log_text()


def test_cancelled_pinentry_leaves_it_locked_without_an_error(
    tray: Tray, locked_agent: RunningAgent
) -> None:
    tray.wait_state(IconKind.LOCKED)
    tray.click()
    wait_until("a pinentry-gtk-2 window", lambda: bool(pinentry_windows(tray)), 20)
    tray.host.display.xdotool("key", "Escape")
    tray.wait_log("unlock: cancelled")
    assert locked_agent.status().state is p.State.LOCKED
    assert tray.state() is IconKind.LOCKED
    assert "failed" not in tray.log_text()


def test_agent_stop_shows_no_agent_and_a_restart_is_picked_up(
    tray: Tray,
    locked_agent: RunningAgent,
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
) -> None:
    tray.wait_state(IconKind.LOCKED)
    locked_agent.stop()
    assert tray.wait_state(IconKind.NO_AGENT, timeout=5) < 1.0
    tray.host.shot("tray-no-agent.png")
    again = make_agent(args=["--pinentry", PINENTRY])  # same socket path, same identity
    assert again.path == locked_agent.path
    assert tray.wait_state(IconKind.LOCKED, timeout=5) < 1.5

    # With no agent, the left click starts one (`nomyo-agent start`), and the tray finds it.
    again.stop()
    tray.wait_state(IconKind.NO_AGENT, timeout=5)
    tray.click()
    try:
        tray.wait_state(IconKind.LOCKED, timeout=20)
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "nomyo_agent", "--socket", again.path, "stop"],
            env=desktop.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    # (once seen failing in CI, not reproduced since: say what the stop itself answered)
    assert stop.returncode == 0, f"stop failed: {stop.stderr}"
    tray.wait_state(IconKind.NO_AGENT, timeout=5)


def test_idle_lock_is_notified(
    tray_host: TrayHost, desktop: Session, make_agent: Callable[..., RunningAgent]
) -> None:
    agent = make_agent(args=["--pinentry", PINENTRY, "--idle-timeout", "1"])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=f"{PASSPHRASE}\n".encode())
    agent.cli("lock")
    with start_tray(tray_host, desktop, agent.path) as tray:
        tray.wait_state(IconKind.LOCKED)
        agent.cli("unlock", "--passphrase-stdin", input=f"{PASSPHRASE}\n".encode())
        tray.wait_log("because it was idle")
        tray.wait_state(IconKind.LOCKED, timeout=2)
        assert agent.status().state is p.State.LOCKED


@pytest.mark.parametrize("tray", ["appindicator"], indirect=True)
def test_appindicator_click_opens_the_menu_whose_first_row_unlocks(
    tray: Tray, locked_agent: RunningAgent
) -> None:
    # libayatana-appindicator with no StatusNotifier host falls back to an XEmbed icon in
    # trayer; its click opens the menu (no default action), and the first usable row unlocks.
    tray.wait_state(IconKind.LOCKED)
    before = set(tray.host.display.windows_named(".*"))
    tray.click()
    wait_until("the menu", lambda: bool(set(tray.host.display.windows_named(".*")) - before), 10)
    time.sleep(0.3)
    tray.host.display.screenshot("screen-appindicator-menu.png")
    tray.host.display.xdotool("key", "Down")
    tray.host.display.xdotool("key", "Return")
    type_into_pinentry(tray, PASSPHRASE)
    tray.wait_state(IconKind.UNLOCKED)
    assert locked_agent.status().state is p.State.UNLOCKED


def dunst_history(display: dict[str, str], desktop: Session) -> list[tuple[str, str]]:
    """(summary, body) of every notification dunst showed, after closing them all."""
    env = {**desktop.env, **display}
    subprocess.run(["dunstctl", "close-all"], env=env, check=True, timeout=10)
    out = subprocess.run(
        ["dunstctl", "history"], env=env, capture_output=True, text=True, check=True, timeout=10
    )
    data = json.loads(out.stdout)["data"][0]
    return [(n["summary"]["data"], n["body"]["data"]) for n in data]


def wait_for_notice(display: dict[str, str], desktop: Session, summary: str) -> str:
    """Poll dunst's history until a notification with ``summary`` shows; return its body."""
    seen: dict[str, str] = {}

    def shown() -> bool:
        seen.update(dunst_history(display, desktop))
        return summary in seen

    wait_until(f"dunst to show {summary!r}", shown)
    return seen[summary]


def test_gtk_notifications_reach_a_real_notification_daemon(
    tray_host: TrayHost, desktop: Session, make_agent: Callable[..., RunningAgent]
) -> None:
    require_programs("dunst", "dunstctl")
    require_gtk()
    env = {**desktop.env, **tray_host.display.env}
    keys = [rsa_key(2048, i) for i in range(2)]
    pems = [
        k.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        for k in keys
    ]
    dunst = subprocess.Popen(
        ["dunst"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until("dunst on the session bus",
                   lambda: desktop.name_has_owner("org.freedesktop.Notifications"))  # fmt: skip
        agent = make_agent(args=["--pinentry", PINENTRY, "--idle-timeout", "3"])
        agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=b"pw\n")
        # The idle timer must not race the tray's start-up: the tray starts on a locked agent
        # (locked by hand, which holds), and the idle period starts only with the unlock below.
        agent.cli("lock")
        with start_tray(tray_host, desktop, agent.path, "gtk") as tray:
            tray.wait_state(IconKind.LOCKED)
            agent.cli("unlock", "--passphrase-stdin", input=b"pw\n")
            # a router whose key changed: the seal is refused and the user is told how to accept
            with agent.connect() as conn:
                conn.call(p.Seal("https://r.example", pems[0], b"{}"), p.SealReply)
                assert isinstance(
                    conn.request(p.Seal("https://r.example", pems[1], b"{}")), p.Error
                )
            # pystray shows one notification at a time, replacing the last: each notice is read
            # from the daemon's history before the next one can replace it.
            pin_body = wait_for_notice(
                tray_host.display.env, desktop, "nomyo-agent: router key changed"
            )
            # ... and the idle timeout locks it, with a notice.
            lock_body = wait_for_notice(tray_host.display.env, desktop, "nomyo-agent locked")
            tray.wait_state(IconKind.LOCKED)
            tray.host.display.screenshot("screen-gtk-notification.png")
    finally:
        os.killpg(dunst.pid, signal.SIGTERM)
        dunst.wait(timeout=10)
    assert "https://r.example" in pin_body
    assert "nomyo-agent pins accept https://r.example" in pin_body
    assert "because it was idle" in lock_body


def test_xorg_icon_docks_when_the_panel_starts_after_the_tray(
    xdisplay: XDisplay, desktop: Session, locked_agent: RunningAgent
) -> None:
    # At login the tray may start before the panel: pystray asks to dock once, finds no tray
    # and never asks again; the tray's own check docks it once a panel appears.
    host = TrayHost(display=xdisplay, region=(640 - 200, 0, 640, 32))
    with start_tray(host, desktop, locked_agent.path) as tray:
        tray.wait_log("state: locked")
        time.sleep(0.5)
        start_trayer(xdisplay)
        assert tray.wait_state(IconKind.LOCKED, timeout=10) < 5


def test_a_tray_started_from_a_terminal_asks_on_its_display_not_in_the_terminal(
    tray_host: TrayHost, desktop: Session, make_agent: Callable[..., RunningAgent]
) -> None:
    """Issue 12, item 4: the agent's pinentry is a terminal flavour (pinentry-tty, as a shell
    user would pick) and the tray runs with a terminal on stdin; a click must still ask on the
    tray's display (the agent picks a graphical pinentry for an asker with no terminal), and
    nothing must appear in the terminal."""
    require_programs("pinentry-tty", "pinentry-gtk-2")
    agent = make_agent(args=["--pinentry", "/usr/bin/pinentry-tty"])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=f"{PASSPHRASE}\n".encode())
    agent.cli("lock")
    controller, shell_tty = os.openpty()
    try:
        with start_tray(tray_host, desktop, agent.path, stdin=shell_tty) as tray:
            tray.wait_state(IconKind.LOCKED)
            tray.click()
            type_into_pinentry(tray, PASSPHRASE)
            tray.wait_state(IconKind.UNLOCKED)
        os.set_blocking(controller, False)
        try:
            written = os.read(controller, 4096)
        except BlockingIOError:
            written = b""
        assert b"Passphrase" not in written, written
    finally:
        os.close(controller)
        os.close(shell_tty)
