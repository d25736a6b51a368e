"""A throwaway desktop session: the one harness of the demo, the tests and the bench.

``open_session(root)`` makes private HOME and XDG folders under ``root``, a D-Bus session bus and
a real gnome-keyring on it, unlocked with a throwaway password (TESTING.md, "A real Secret
Service"), so that nobody's real keyring is touched; ``nomyo_devserver.agents`` runs agents in
it (``start_agent``, and ``open_agent`` one with a fresh identity, unlocked). Example::

    with tempfile.TemporaryDirectory() as tmp, open_session(Path(tmp)) as session:
        with open_agent(session.env, bits=2048) as agent:
            agent.call(p.Status(), p.StatusReply)

Rules: every process started here runs in its own process group and is stopped with it
(``stop_group``), also on errors and Ctrl-C; readiness is what each part reports itself (the
bus prints its address, the keyring claims its bus name, the agent writes ``ready <pid>`` on its
ready pipe: ``_launch.read_ready``), never a fixed sleep; a missing system program or a part that
does not start is a ``SessionError`` with a hint. Every child must get ``Session.env``: programs
the bus starts on demand inherit the bus's environment, so both share the same folders.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "REQUIRED",
    "Session",
    "SessionError",
    "open_session",
    "private_env",
    "start_bus",
    "stop_group",
]

REQUIRED = ("dbus-daemon", "gnome-keyring-daemon", "dbus-send")
# Whatever would connect a child to the developer's own desktop, keyring or agent.
_LEAKY_ENV = ("DBUS_", "XDG_", "DISPLAY", "WAYLAND_", "NOMYO_", "GNOME_KEYRING", "SSH_AUTH")


class SessionError(Exception):
    """A part of the session did not start; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def stop_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL them
    after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def private_env(root: Path) -> dict[str, str]:
    """This environment without the developer's desktop, with HOME and XDG folders under
    ``root`` (created; the runtime folder 0700) and the Secret Service keyring backend chosen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_ENV)}
    home = root / "home"
    folders = {
        "HOME": home,
        "XDG_RUNTIME_DIR": root / "run",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    folders["XDG_RUNTIME_DIR"].chmod(0o700)
    env.update({k: str(v) for k, v in folders.items()})
    env["NO_AT_BRIDGE"] = "1"
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.SecretService.Keyring"
    return env


@dataclass
class Session:
    """A running session: its environment, and the bus and keyring processes (stopped by
    ``open_session``)."""

    home: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"])

    @property
    def bus_address(self) -> str:
        return self.env["DBUS_SESSION_BUS_ADDRESS"]

    def name_has_owner(self, name: str) -> bool:
        out = subprocess.run(
            ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
             "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
            env=self.env, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return "boolean true" in out.stdout

    def lock_keyring(self) -> None:
        """Lock the default collection, as a screen locker would."""
        script = (
            "import secretstorage; c = secretstorage.dbus_init(); "
            "secretstorage.get_default_collection(c).lock()"
        )
        subprocess.run([sys.executable, "-c", script], env=self.env, check=True, timeout=20)


def start_bus(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A private ``dbus-daemon`` (in its own process group, for ``stop_group``) and its
    address, which it prints once it listens. The session bus, or a stand-in system bus."""
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert bus.stdout is not None
    address = bus.stdout.readline().decode().strip()
    bus.stdout.close()
    if not address:
        stop_group(bus)
        raise SessionError("dbus-daemon did not start", "run `dbus-daemon --session` to see why")
    return bus, address


@contextlib.contextmanager
def open_session(
    root: Path, *, unlocked: bool = True, password: str | None = None
) -> Iterator[Session]:
    """A fresh session bus with gnome-keyring on it, in folders under ``root``; about 0.1 s.

    ``unlocked``: the login keyring is created and unlocked with ``password`` (a random one by
    default); without it gnome-keyring has no collection at all (creating one needs a prompt).
    """
    missing = [name for name in REQUIRED if shutil.which(name) is None]
    if missing:
        raise SessionError(
            f"missing system programs: {', '.join(missing)}",
            "run `./dev setup` (as root on Debian), or `apt install dbus gnome-keyring`",
        )
    env = private_env(root)
    session = Session(home=Path(env["HOME"]), env=env)
    try:
        bus, address = start_bus(env)
        session.procs.append(bus)
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", *(["--unlock"] if unlocked else []),
             "--components=secrets"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        session.procs.append(keyring)
        assert keyring.stdin is not None
        if unlocked:
            keyring.stdin.write((password or secrets.token_urlsafe(16)).encode())
        keyring.stdin.close()
        # Ready when it owns its name on the bus; it says so nowhere else.
        deadline = time.monotonic() + 10
        while not session.name_has_owner("org.freedesktop.secrets"):
            if time.monotonic() > deadline or keyring.poll() is not None:
                raise SessionError(
                    "gnome-keyring did not offer a Secret Service within 10 s",
                    "check that gnome-keyring-daemon runs: `gnome-keyring-daemon --version`",
                )
            time.sleep(0.02)
        yield session
    finally:
        for proc in reversed(session.procs):
            stop_group(proc)
