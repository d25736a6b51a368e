"""The identity follows the desktop session (issue 12, item 1): the agent locks on screen lock,
before suspend (holding a logind delay inhibitor until the key is gone) and at session end.

Real parts: the ``desktop`` session bus, a private dbus-daemon standing in for the system bus,
and stand-in services owning ``org.freedesktop.login1`` and the screensaver names that emit the
real signals with the real signatures (``support.session``). The pure decision is tested alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest

from nomyo_agent import protocol as p
from nomyo_agent._config import ConfigError, load_config
from nomyo_agent._session_policy import Verdict, classify
from support.agent import RunningAgent
from support.desktop import Session, stop_group
from support.session import LoginSession

OURS = "/org/freedesktop/login1/session/c1"
BOTH = frozenset({"screen", "suspend"})
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"


# --- the pure decision -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ((MANAGER, "PrepareForSleep", "/org/freedesktop/login1", (True,)), "suspend"),
        ((SESSION, "Lock", OURS, ()), "session_lock"),
        (
            (
                "org.freedesktop.DBus.Properties",
                "PropertiesChanged",
                OURS,
                (SESSION, {"LockedHint": ("b", True)}, []),
            ),
            "locked_hint",
        ),
        (("org.freedesktop.ScreenSaver", "ActiveChanged", "/ScreenSaver", (True,)), "screensaver"),
        (("org.gnome.ScreenSaver", "ActiveChanged", "/org/gnome/x", (True,)), "screensaver"),
        ((MANAGER, "SessionRemoved", "/org/freedesktop/login1", ("c1", OURS)), "session_end"),
    ],
)
def test_each_locking_signal_names_its_reason(
    signal: tuple[str, str, str, tuple[object, ...]], expected: str
) -> None:
    verdict = classify(*signal, sessions=frozenset({OURS}), lock_on=BOTH)
    assert verdict == Verdict("lock", expected)


@pytest.mark.parametrize(
    "signal",
    [
        (SESSION, "Lock", "/org/freedesktop/login1/session/c9", ()),  # another user's session
        ("org.freedesktop.ScreenSaver", "ActiveChanged", "/ScreenSaver", (False,)),
        (
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            OURS,
            (SESSION, {"LockedHint": ("b", False)}, []),
        ),
        (
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            OURS,
            (SESSION, {"IdleHint": ("b", True)}, []),
        ),
        ((MANAGER, "SessionRemoved", "/org/freedesktop/login1", ("c9", "/x/c9"))),
        ("org.example.Other", "ActiveChanged", "/x", (True,)),
    ],
)
def test_other_signals_do_not_lock(signal: tuple[str, str, str, tuple[object, ...]]) -> None:
    assert classify(*signal, sessions=frozenset({OURS}), lock_on=BOTH) is None


def test_lock_on_selects_the_events() -> None:
    sleep = (MANAGER, "PrepareForSleep", "/org/freedesktop/login1", (True,))
    screen = ("org.freedesktop.ScreenSaver", "ActiveChanged", "/ScreenSaver", (True,))
    only_screen = frozenset({"screen"})
    assert classify(*sleep, sessions=frozenset(), lock_on=only_screen) is None
    assert classify(*screen, sessions=frozenset(), lock_on=frozenset({"suspend"})) is None
    assert classify(*screen, sessions=frozenset(), lock_on=frozenset()) is None
    resume = (MANAGER, "PrepareForSleep", "/org/freedesktop/login1", (False,))
    assert classify(*resume, sessions=frozenset(), lock_on=BOTH) == Verdict("rearm")


def test_lock_on_config(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "config.toml"
    assert load_config(path, environ={}).lock_on == ("screen", "suspend")
    path.write_text("[agent]\nlock_on = []\n")
    assert load_config(path, environ={}).lock_on == ()
    path.write_text('[agent]\nlock_on = ["suspend"]\n')
    assert load_config(path, environ={}).lock_on == ("suspend",)
    for bad in ('"screen"', '["screensaver"]', "true"):
        path.write_text(f"[agent]\nlock_on = {bad}\n")
        with pytest.raises(ConfigError, match="lock_on must be a list of screen, suspend"):
            load_config(path, environ={})


# --- the real buses --------------------------------------------------------------------------


def _unlocked_agent(make_agent: Callable[..., RunningAgent]) -> RunningAgent:
    agent = make_agent()
    agent.keygen(bits=2048)  # no passphrase: generated, stored and left unlocked
    assert agent.status().state is p.State.UNLOCKED
    return agent


def _time_to_lock(agent: RunningAgent, standin: LoginSession, command: str) -> p.StateEvent:
    """Emit ``command`` and wait for the agent's lock event; asserts it came within a second."""
    with agent.connect() as conn:
        events = conn.watch()
        assert next(events).state is p.State.UNLOCKED
        sent = time.monotonic()  # before the stand-in is told: an upper bound
        standin.send(command)
        conn.settimeout(5)
        event = next(events)
        took = time.monotonic() - sent
    assert event.state is p.State.LOCKED, event
    assert took < 1.0, f"locked {took:.3f} s after the signal"
    return event


def _audit_events(desktop: Session) -> list[str]:
    log = desktop.home / ".local" / "state" / "nomyo-agent" / "audit.log"
    return [json.loads(line)["event"] for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_suspend_locks_under_a_delay_inhibitor_released_once_the_key_is_gone(
    login_session: LoginSession, make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    agent = _unlocked_agent(make_agent)
    login_session.expect("inhibit sleep nomyo-agent delay")
    assert not login_session.reported("released")
    status = agent.cli("status").stdout
    assert "sleep delay inhibitor held" in status, status

    event = _time_to_lock(agent, login_session, "sleep 1")
    assert event.reason == "suspend"
    login_session.expect("released", timeout=2)
    st = agent.status()
    assert (st.state, st.locked_by) == (p.State.LOCKED, "suspend")
    assert "suspend" in _audit_events(desktop)
    assert "(by suspend)" in agent.cli("status").stdout

    # On resume the inhibitor is taken again, for the next sleep.
    login_session.send("sleep 0")
    login_session.expect("inhibit sleep nomyo-agent delay")
    # And stopping the agent releases it (after the key is dropped).
    assert agent.stop() == 0
    login_session.expect("released")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("lock", "session_lock"),
        ("hint 1", "locked_hint"),
        ("screensaver 1", "screensaver"),
        ("gnome 1", "screensaver"),
        ("remove", "session_end"),
    ],
)
def test_screen_lock_and_session_end_lock_the_agent(
    login_session: LoginSession,
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    command: str,
    reason: str,
) -> None:
    agent = _unlocked_agent(make_agent)
    login_session.expect("inhibit sleep nomyo-agent delay")  # the watch is up
    event = _time_to_lock(agent, login_session, command)
    assert event.reason == reason
    assert agent.status().locked_by == reason
    assert _audit_events(desktop)[-1] == reason


@pytest.mark.slow
def test_signals_that_are_not_ours_or_not_loginds_leave_the_key_alone(
    login_session: LoginSession, make_agent: Callable[..., RunningAgent]
) -> None:
    agent = _unlocked_agent(make_agent)
    login_session.expect("inhibit sleep nomyo-agent delay")
    for command in (
        "foreign-lock",
        "screensaver 0",
        "hint 0",
        "sleep 0",
        "rogue-sleep",
        "rogue-lock",
    ):
        login_session.send(command)
    # A signal that does lock, sent last on the same bus, proves the earlier ones were read.
    event = _time_to_lock(agent, login_session, "lock")
    assert event.reason == "session_lock"


@pytest.mark.slow
def test_lock_on_empty_follows_nothing(
    login_session: LoginSession, make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    config = desktop.home / ".config" / "nomyo-agent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[agent]\nlock_on = []\n")
    agent = _unlocked_agent(make_agent)
    for command in ("sleep 1", "lock", "screensaver 1"):
        login_session.send(command)
    assert agent.status().state is p.State.UNLOCKED
    assert not login_session.reported("inhibit sleep nomyo-agent delay")
    assert "session:      off (lock_on = [])" in agent.cli("status").stdout


def _wait_status(agent: RunningAgent, text: str, timeout: float = 10.0) -> str:
    """The status text once it shows ``text`` (the watch starts beside the server)."""
    deadline = time.monotonic() + timeout
    while True:
        status = agent.cli("status").stdout
        if text in status:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"status never showed {text!r}:\n{status}")


@pytest.mark.slow
def test_no_system_bus_is_reported_and_losing_the_session_bus_locks(
    make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    desktop.env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/system_bus"
    agent = _unlocked_agent(make_agent)
    status = _wait_status(agent, "session bus: screensaver ActiveChanged")
    assert "system bus: unreachable" in status, status
    assert "not following the desktop session on the system bus" in agent.log_text()

    with agent.connect() as conn:
        events = conn.watch()
        assert next(events).state is p.State.UNLOCKED
        session_bus = desktop.procs[0]  # the dbus-daemon of the desktop fixture
        stop_group(session_bus)
        conn.settimeout(5)
        event = next(events)
    assert (event.state, event.reason) == (p.State.LOCKED, "session_end")


@pytest.mark.parametrize(
    "body",
    [
        (SESSION, "not a dict", []),
        (SESSION, {"LockedHint": "not a variant"}, []),
        (SESSION,),
        (),
    ],
)
def test_malformed_signal_bodies_mean_nothing(body: tuple[object, ...]) -> None:
    """A signal can be addressed to the agent by any process on the bus, with any body."""
    signal = ("org.freedesktop.DBus.Properties", "PropertiesChanged", OURS, body)
    assert classify(*signal, sessions=frozenset({OURS}), lock_on=BOTH) is None


LIMITED_BUS = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
  </policy>
  <limit name="max_match_rules_per_connection">1</limit>
</busconfig>
"""


@pytest.mark.slow
def test_a_session_bus_that_refuses_the_watch_leaves_the_system_watch_and_inhibitor_alone(
    login_session: LoginSession, make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    config = desktop.home / "limited-bus.conf"
    config.write_text(LIMITED_BUS.format(dir=desktop.home))
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        env=desktop.env, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        bus.stdout.close()
        agent = make_agent(env={**desktop.env, "DBUS_SESSION_BUS_ADDRESS": address})
        login_session.expect("inhibit sleep nomyo-agent delay")
        status = _wait_status(agent, "session bus: refused")
        assert "sleep delay inhibitor held" in status, status
        assert not login_session.reported("released")
    finally:
        stop_group(bus)


@pytest.mark.slow
def test_a_stop_right_after_the_start_is_not_held_up_by_the_session_watch(
    make_agent: Callable[..., RunningAgent],
) -> None:
    # SIGTERM while the watch is still setting up on the session bus: cancelling it must end it
    # (asyncio.wait_for on 3.11 can swallow a cancellation that races its own completion, and
    # then the agent waited forever on the watch after dropping the key).
    for _ in range(12):
        agent = make_agent()
        started = time.monotonic()
        assert agent.stop(timeout=5) == 0, agent.log_text()
        assert time.monotonic() - started < 3, agent.log_text()
