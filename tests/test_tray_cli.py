"""nomyo-tray's command line without a tray: no display, a display nobody serves, autostart."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nomyo_tray._cli import autostart_path, desktop_entry
from support.userdirs import as_user


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nomyo_tray", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return {**base, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def test_no_display_is_one_line_and_exit_1(env: dict[str, str]) -> None:
    out = run(env=env)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("nomyo-tray: error: no display")


def test_pystray_is_not_imported_without_a_display(env: dict[str, str]) -> None:
    code = (
        "import sys, nomyo_tray; from nomyo_tray._cli import main; rc = main([]); "
        "print(rc, 'pystray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.stdout.split() == ["1", "False"]


def test_a_display_nobody_serves_is_one_error(env: dict[str, str]) -> None:
    out = run("--backend", "xorg", env={**env, "DISPLAY": ":4242"})
    assert out.returncode == 1
    assert out.stderr.startswith("nomyo-tray: error: no tray backend could start (xorg: ")
    assert "Traceback" not in out.stderr


def test_help_works_anywhere(env: dict[str, str]) -> None:
    out = run("--help", env=env)
    assert out.returncode == 0
    assert "--install-autostart" in out.stdout


def test_bad_backend_is_a_usage_error(env: dict[str, str]) -> None:
    assert run("--backend", "win32", env=env).returncode == 2


def test_install_and_uninstall_autostart(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "my agent.sock"  # a space, to check the Exec quoting
    out = run("--install-autostart", "--backend", "xorg", "--socket", str(sock), env=env)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "cfg" / "autostart" / "nomyo-tray.desktop"
    as_user(monkeypatch, env)
    assert path == autostart_path()
    assert str(path) in out.stdout
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(path)
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    assert section["Terminal"] == "false"
    argv = shlex.split(section["Exec"])
    assert argv[-4:] == ["--backend", "xorg", "--socket", str(sock)]
    # the command it names really is the tray: it answers --help
    help_out = subprocess.run(
        [*argv[:-4], "--help"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert help_out.returncode == 0
    assert "nomyo-tray" in help_out.stdout

    assert run("--install-autostart", env=env).returncode == 0  # again: replaced, not an error
    assert "--socket" not in path.read_text()
    out = run("--uninstall-autostart", env=env)
    assert out.returncode == 0
    assert not path.exists()
    assert "no autostart entry" in run("--uninstall-autostart", env=env).stdout


def test_exec_quoting_follows_the_desktop_entry_spec() -> None:
    text = desktop_entry(["/opt/my apps/nomyo-tray", "--socket", '/tmp/a"$b`c\\d'])
    line = next(x for x in text.splitlines() if x.startswith("Exec="))
    assert line == 'Exec="/opt/my apps/nomyo-tray" --socket "/tmp/a\\"\\$b\\`c\\\\d"'
