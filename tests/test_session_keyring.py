"""An agent started outside the desktop session (ssh, ``su -``, cron, a script: no session bus, or
another one) and the session's keyring (issue 12, item 4): when its own bus has no Secret
Service but the asking client names a session bus, the agent uses that bus for the keyring;
when the asker names none either, the error says exactly what happened and how to restart.

Real parts: the ``desktop`` session bus with gnome-keyring holding the identity, and agents
started with ``DBUS_SESSION_BUS_ADDRESS`` pointing nowhere, as from an ssh login.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from nomyo_agent import protocol as p
from support.agent import RunningAgent
from support.apps import router_pem
from support.desktop import Session

NO_BUS = "unix:path=/nonexistent/session_bus"


def outside_agent(make_agent: Callable[..., RunningAgent], desktop: Session) -> RunningAgent:
    """An identity stored from inside the session, then an agent started outside it."""
    inside = make_agent(name="inside")
    inside.keygen(bits=2048)  # no passphrase: the keyring is all that guards it
    assert inside.stop() == 0
    env = {**desktop.env, "DBUS_SESSION_BUS_ADDRESS": NO_BUS}
    agent = make_agent(name="outside", env=env)
    assert agent.status().state is p.State.LOCKED
    return agent


def from_desktop(agent: RunningAgent, desktop: Session) -> RunningAgent:
    """The same agent, driven by commands run in the desktop session's environment."""
    return dataclasses.replace(agent, env={**desktop.env, "NOMYO_AGENT_SOCK": agent.path})


@pytest.mark.slow
def test_unlock_from_the_desktop_uses_the_desktops_session_bus(
    make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    agent = outside_agent(make_agent, desktop)
    out = from_desktop(agent, desktop).cli("unlock")
    assert "unlocked" in out.stderr
    st = agent.status()
    assert st.state is p.State.UNLOCKED
    assert st.keyring_backend == "keyring.backends.SecretService.Keyring"
    assert "using the asking client's session bus for the keyring" in agent.log_text()


@pytest.mark.slow
def test_a_seal_from_the_desktop_auto_unlocks_through_its_session_bus(
    make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    agent = outside_agent(make_agent, desktop)
    with agent.connect() as conn:
        where = p.PinEntry(env={"DBUS_SESSION_BUS_ADDRESS": desktop.bus_address})
        conn.call(p.Hello(client="test", pinentry=where), p.HelloReply)
        conn.call(
            p.Seal(origin="https://router.example", router_key_pem=router_pem(), plaintext=b"{}"),
            p.SealReply,
        )
    assert agent.status().state is p.State.UNLOCKED


@pytest.mark.slow
def test_with_no_session_bus_anywhere_the_error_says_how_to_restart(
    make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    agent = outside_agent(make_agent, desktop)
    out = agent.cli("unlock", check=False)  # run from the same bus-less place as the agent
    assert out.returncode == 1
    assert "cannot reach a Secret Service" in out.stderr
    assert "started outside your desktop session" in out.stderr
    assert "nomyo-agent stop" in out.stderr
    assert agent.status().state is p.State.LOCKED
