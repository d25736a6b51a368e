"""A private desktop session for one test: temporary HOME and XDG folders, a D-Bus session bus
and a real, unlocked gnome-keyring Secret Service on it (TESTING.md, "A real Secret Service").

Everything a test starts (the agent, a pinentry) must get ``Session.env``: programs that the bus
starts on demand inherit the bus's environment, so both share the same HOME and XDG folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KEYRING_PASSWORD = "test-login-password"
REQUIRED = ("dbus-daemon", "gnome-keyring-daemon", "dbus-send")


def stop_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL them
    after ``grace`` seconds. Every real part the tests start is stopped this way."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def require_programs(*names: str) -> None:
    """Fail loudly (never skip) when a system program the test needs is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(
            f"missing system programs {missing}: run `./dev setup` (installs them as root on "
            "Debian) or install them by hand",
            pytrace=False,
        )


@dataclass
class Session:
    home: Path
    env: dict[str, str]
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"])

    @property
    def bus_address(self) -> str:
        return self.env["DBUS_SESSION_BUS_ADDRESS"]

    def name_has_owner(self, name: str) -> bool:
        out = subprocess.run(
            [
                "dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", f"string:{name}",
            ],
            env=self.env, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return "boolean true" in out.stdout

    def lock_keyring(self) -> None:
        """Lock the default collection, as a screen locker would."""
        script = (
            "import secretstorage; c = secretstorage.dbus_init(); "
            "secretstorage.get_default_collection(c).lock()"
        )
        subprocess.run(
            [sys.executable, "-c", script],
            env=self.env, check=True, timeout=20,
        )  # fmt: skip


def _make_dirs(root: Path) -> dict[str, str]:
    dirs = {
        "HOME": root / "home",
        "XDG_RUNTIME_DIR": root / "run",
        "XDG_CONFIG_HOME": root / "home" / ".config",
        "XDG_STATE_HOME": root / "home" / ".local" / "state",
        "XDG_DATA_HOME": root / "home" / ".local" / "share",
        "XDG_CACHE_HOME": root / "home" / ".cache",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    dirs["XDG_RUNTIME_DIR"].chmod(0o700)
    return {k: str(v) for k, v in dirs.items()}


def base_env(root: Path) -> dict[str, str]:
    """A clean environment with private folders and no desktop of the developer's leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DBUS_", "XDG_", "DISPLAY", "WAYLAND_", "NOMYO_", "GNOME_KEYRING"))
    }
    env.update(_make_dirs(root))
    env["NO_AT_BRIDGE"] = "1"
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.SecretService.Keyring"
    return env


@contextlib.contextmanager
def open_session(root: Path, *, unlocked: bool = True) -> Iterator[Session]:
    """A fresh session bus with gnome-keyring on it; about 0.1 s to start.

    ``unlocked``: the login keyring is created and unlocked with ``KEYRING_PASSWORD``; without
    it gnome-keyring has no collection at all (creating one needs a prompt).
    """
    require_programs(*REQUIRED)
    env = base_env(root)
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
        env=env, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    session = Session(home=Path(env["HOME"]), env=env, _procs=[bus])
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        bus.stdout.close()
        assert address, "dbus-daemon printed no address"
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", *(["--unlock"] if unlocked else []),
             "--components=secrets"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        assert keyring.stdin is not None
        if unlocked:
            keyring.stdin.write(KEYRING_PASSWORD.encode())
        keyring.stdin.close()
        session._procs.append(keyring)
        deadline = time.monotonic() + 10
        while not session.name_has_owner("org.freedesktop.secrets"):
            if time.monotonic() > deadline:
                pytest.fail("gnome-keyring did not claim org.freedesktop.secrets in 10 s")
            time.sleep(0.02)
        yield session
    finally:
        for proc in reversed(session._procs):
            stop_group(proc)


@pytest.fixture
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A fresh session bus with an unlocked gnome-keyring."""
    with open_session(tmp_path_factory.mktemp("desktop")) as session:
        yield session


@pytest.fixture
def desktop_without_login_keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A session bus whose gnome-keyring has no collection (no login keyring was ever made)."""
    with open_session(tmp_path_factory.mktemp("nocollection"), unlocked=False) as session:
        yield session


@pytest.fixture
def no_bus_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment with no session bus at all (keyring raises NoKeyringError there)."""
    env = base_env(tmp_path_factory.mktemp("nobus"))
    env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/bus"
    return env
