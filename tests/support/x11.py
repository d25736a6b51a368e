"""A private X display for one test (Xvfb), optionally with a system tray host (trayer), and the
helpers to look at it (screenshots) and to act on it (xdotool), as TESTING.md describes.

Rules: every program started here is in its own process group and is stopped with ``os.killpg``
when the test ends; every wait is bounded; a missing program fails the test (never skips).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageGrab

from support.desktop import require_programs, stop_group
from support.waiting import wait_until

__all__ = ["TrayHost", "XDisplay", "find_color", "start_trayer"]

TRAY_HEIGHT = 32


@dataclass
class XDisplay:
    """A running Xvfb: ``name`` is ``":N"``; ``env`` is ``{"DISPLAY": name}`` to merge in."""

    name: str
    artifacts: Path
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"DISPLAY": self.name}

    def screenshot(self, save_as: str | None = None) -> Image.Image:
        """The whole screen as RGB; also saved under ``artifacts`` when ``save_as`` is given."""
        img = ImageGrab.grab(xdisplay=self.name).convert("RGB")
        if save_as:
            img.save(self.artifacts / save_as)
        return img

    def xdotool(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            ["xdotool", *args],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=20,
            check=False,
        )  # fmt: skip
        if check and out.returncode != 0:
            pytest.fail(f"xdotool {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def windows_named(self, pattern: str) -> list[str]:
        """Ids of the viewable windows whose name matches ``pattern`` (a regex)."""
        return self.xdotool("search", "--onlyvisible", "--name", pattern, check=False).split()

    def selection_owner(self, atom: str) -> int:
        """The X window owning selection ``atom`` (0 when none)."""
        from Xlib import display as xdisplay  # type: ignore[import-untyped]

        d = xdisplay.Display(self.name)
        try:
            owner = d.get_selection_owner(d.intern_atom(atom))
            return int(getattr(owner, "id", 0) or 0)
        finally:
            d.close()


@dataclass
class TrayHost:
    """trayer docked at the top right of ``display``: icons appear in ``region``."""

    display: XDisplay
    region: tuple[int, int, int, int]  # left, top, right, bottom in screen pixels

    def shot(self, save_as: str | None = None) -> Image.Image:
        """The tray panel only."""
        return self.display.screenshot(save_as).crop(self.region)


def _start_xvfb(artifacts: Path) -> XDisplay:
    require_programs("Xvfb", "xdotool")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp",
         "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    os.close(write_fd)
    # Xvfb writes the number and the newline separately, and dies if the pipe is closed in
    # between: read up to the newline.
    got = b""
    deadline = time.monotonic() + 15
    try:
        while not got.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 32) if ready else b""
            if not chunk:
                break
            got += chunk
    finally:
        os.close(read_fd)
    number = got.decode().strip() if got.endswith(b"\n") else ""
    if not number:
        stop_group(proc)
        pytest.fail("Xvfb did not report a display number within 15 s")
    return XDisplay(name=f":{number}", artifacts=artifacts, _procs=[proc])


@pytest.fixture
def xdisplay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XDisplay]:
    """A fresh Xvfb (640x480x24) for this test; screenshots land in a temp folder."""
    disp = _start_xvfb(tmp_path_factory.mktemp("x11"))
    try:
        yield disp
    finally:
        for proc in reversed(disp._procs):
            stop_group(proc)


@pytest.fixture
def tray_host(xdisplay: XDisplay) -> TrayHost:
    """trayer as the system tray (XEmbed), 200x32 px at the top right; ready once it owns
    ``_NET_SYSTEM_TRAY_S0``, so an icon shown after this docks at once."""
    return start_trayer(xdisplay)


def start_trayer(xdisplay: XDisplay) -> TrayHost:
    """Start trayer on ``xdisplay`` now (stopped with the display); see ``tray_host``."""
    require_programs("trayer")
    proc = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "200",
         "--heighttype", "pixel", "--height", str(TRAY_HEIGHT), "--transparent", "false",
         "--SetDockType", "true", "--tint", "0xffffff"],
        env={**os.environ, **xdisplay.env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    xdisplay._procs.append(proc)
    wait_until("trayer to own _NET_SYSTEM_TRAY_S0", lambda: bool(
        xdisplay.selection_owner("_NET_SYSTEM_TRAY_S0")))  # fmt: skip
    return TrayHost(display=xdisplay, region=(640 - 200, 0, 640, TRAY_HEIGHT))


def find_color(
    img: Image.Image, match: Callable[[tuple[int, int, int]], bool]
) -> tuple[int, tuple[int, int, int, int] | None]:
    """How many pixels satisfy ``match``, and their bounding box (None when there are none)."""
    px = img.load()
    assert px is not None
    count, box = 0, [img.width, img.height, -1, -1]
    for y in range(img.height):
        for x in range(img.width):
            value = px[x, y]
            assert isinstance(value, tuple)
            if match((value[0], value[1], value[2])):
                count += 1
                box = [min(box[0], x), min(box[1], y), max(box[2], x), max(box[3], y)]
    return count, (tuple(box) if count else None)  # type: ignore[return-value]
