"""A private desktop session for one test: temporary HOME and XDG folders, a D-Bus session bus
and a real, unlocked gnome-keyring Secret Service on it (TESTING.md, "A real Secret Service").

The session itself is ``nomyo_devserver.session``, the harness the demo and the bench use too;
this module adds the fixtures and turns its errors into test failures. Everything a test starts
(the agent, a pinentry) must get ``Session.env``: programs that the bus starts on demand inherit
the bus's environment, so both share the same HOME and XDG folders.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomyo_devserver.session import REQUIRED, Session, SessionError, private_env, stop_group
from nomyo_devserver.session import open_session as _open_session

__all__ = ["KEYRING_PASSWORD", "Session", "open_session", "require_programs", "stop_group"]

KEYRING_PASSWORD = "test-login-password"


def require_programs(*names: str) -> None:
    """Fail loudly (never skip) when a system program the test needs is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(
            f"missing system programs {missing}: run `./dev setup` (installs them as root on "
            "Debian) or install them by hand",
            pytrace=False,
        )


@contextlib.contextmanager
def open_session(root: Path, *, unlocked: bool = True) -> Iterator[Session]:
    """``nomyo_devserver.session.open_session`` with the tests' keyring password; a part that
    does not start fails the test."""
    require_programs(*REQUIRED)
    try:
        with _open_session(root, unlocked=unlocked, password=KEYRING_PASSWORD) as session:
            yield session
    except SessionError as exc:
        pytest.fail(f"{exc} (hint: {exc.hint})", pytrace=False)


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
    env = private_env(tmp_path_factory.mktemp("nobus"))
    env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/bus"
    return env
