"""Issue 13, items 1, 2, 3 and 13: the first minutes of a new user. The checkout installs as the
README says; every console script has ``--version``; the daemon is found by ``pgrep
nomyo-agent``; the tray without its extra says which extra in one line (and installs no autostart
entry that would crash at each login); the devserver answers other methods with JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nomyo_agent import __version__
from support.console import console
from support.desktop import Session
from support.devserver import RunningDevServer

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("nomyo-agent", "nomyo-chat", "nomyo-tray", "nomyo-devserver")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_console_script_has_version(name: str) -> None:
    out = console(name, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{name} {__version__}\n"


def test_the_daemon_is_found_by_its_name(desktop: Session) -> None:
    sock = str(desktop.runtime_dir / "nomyo-agent" / "agent.sock")
    env = {**desktop.env, "NOMYO_AGENT_SOCK": sock}
    out = console("nomyo-agent", "start", "-q", env=env)
    assert out.returncode == 0, out.stderr
    pid = str(json.loads(console("nomyo-agent", "status", "--json", env=env).stdout)["pid"])
    try:
        found = subprocess.run(
            ["pgrep", "-x", "nomyo-agent"], capture_output=True, text=True, check=False
        ).stdout.split()
        assert pid in found  # other agents of this machine may match too
        assert (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .startswith(f"nomyo-agent serve --socket {sock}".encode())
        )
    finally:
        assert console("nomyo-agent", "stop", env=env).returncode == 0


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout installed as the README says, but without the ``[tray]`` extra: a fresh
    venv, ``pip install .`` (uv's, from the locked tool venv ``./dev setup`` made)."""
    uv = ROOT / ".venv-tools" / "bin" / "uv"
    if not uv.exists():
        pytest.fail(f"{uv} is missing: run ./dev setup", pytrace=False)
    venv = tmp_path_factory.mktemp("plain-install") / "venv"
    for argv in (
        [str(uv), "venv", "-q", "--python", sys.executable, str(venv)],
        [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(ROOT)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
    return venv / "bin"


def test_an_install_from_the_checkout_has_every_command(plain_install: Path) -> None:
    for name in SCRIPTS:
        out = subprocess.run(
            [str(plain_install / name), "--version"], capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert out.stdout == f"{name} {__version__}\n", out.stderr


def test_the_tray_without_its_extra_names_the_extra(plain_install: Path, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env = {**base, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    for args in ((), ("--install-autostart",)):
        out = subprocess.run(
            [str(plain_install / "nomyo-tray"), *args], env={**env, "DISPLAY": ":99"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr
        lines = out.stderr.splitlines()
        assert lines[0] == (
            "nomyo-tray: error: the tray needs the [tray] extra (pystray, Pillow not installed)"
        )
        assert lines[1].startswith("hint: reinstall with it from the checkout")
        assert len(lines) == 2
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "cfg" / "autostart").exists()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_the_devserver_answers_other_methods_with_json(
    devserver: RunningDevServer, method: str
) -> None:
    with httpx.Client(trust_env=False, timeout=10) as http:
        known = http.request(method, f"{devserver.url}/v1/chat/secure_completion", content=b"x")
        unknown = http.request(method, f"{devserver.url}/nowhere")
    assert known.status_code == 405
    assert known.headers["content-type"].startswith("application/json")
    assert "method not allowed" in known.text
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/json")
