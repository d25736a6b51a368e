"""What the client tests talk to (``support/client_fakes.py``, ``support/scripted_router.py``),
checked on its own, so that a broken stand-in cannot make the client tests pass: the live agent
is the real one, the router opens only what is really sealed to it, and the two faults do what
their names say."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from nomyo_agent import _envelope, _keys
from nomyo_agent import errors as ae
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from support.client_fakes import CuttingRelay, LiveAgent, OtherVersionAgent
from support.scripted_router import ROUTER_PEM, ROUTER_PEM_2, ScriptedRouter
from support.waiting import wait_until


def test_live_agent_is_the_real_one(live_agent: LiveAgent) -> None:
    hello = live_agent.call(p.Hello(), p.HelloReply)
    assert hello.protocol == p.PROTOCOL_VERSION
    assert set(p.CAPABILITIES) <= set(hello.capabilities)
    seal = p.Seal(origin="https://router.test", router_key_pem=ROUTER_PEM, plaintext=b"{}")
    sealed = live_agent.call(seal, p.SealReply)
    assert sealed.fingerprint == live_agent.fingerprint()
    fingerprint = _keys.fingerprint(_keys.load_router_key(ROUTER_PEM))
    assert live_agent.pinned() == {"https://router.test": fingerprint}
    with pytest.raises(ae.PinMismatchError):
        live_agent.call(
            p.Seal(origin="https://router.test", router_key_pem=ROUTER_PEM_2, plaintext=b"{}"),
            p.SealReply,
        )
    with pytest.raises(ae.DecryptFailedError):  # sealed to the router, not to the agent
        live_agent.call(p.Open(package=sealed.package), p.OpenReply)
    assert live_agent.counters.seals == 1


def test_scripted_router_answers_only_what_is_sealed_to_its_key(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()
    ours = live_agent.call(p.PublicKey(), p.IdentityReply).public_key_pem
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def post(recipient: str) -> httpx.Response:
        package = _envelope.seal(_keys.load_router_key(recipient), body)
        return router(httpx.Request("POST", "https://r/v1/chat/secure_completion",
                                    content=package, headers={"x-public-key": ours}))  # fmt: skip

    assert post(ROUTER_PEM_2).status_code == 400
    answer = post(ROUTER_PEM)
    assert answer.status_code == 200
    opened = live_agent.call(p.Open(package=answer.content), p.OpenReply)
    assert json.loads(opened.plaintext)["choices"][0]["message"]["content"] == "hi"
    assert opened.processed_at == 1700000001


def test_other_version_agent_speaks_another_version_and_goes_on_stop(
    other_version_agent: OtherVersionAgent,
) -> None:
    with AgentConnection.open(other_version_agent.path, timeout=5) as conn:
        assert conn.call(p.Hello(), p.HelloReply).protocol == p.PROTOCOL_VERSION + 1
        conn.call(p.Stop(), p.Ok)
    # The Ok is sent before the socket goes, as an agent's is: wait for it to go.
    wait_until("the socket is gone", lambda: not Path(other_version_agent.path).exists())
    with pytest.raises(ae.AgentUnavailableError):
        AgentConnection.open(other_version_agent.path, timeout=5)
    assert other_version_agent.ops == ["Hello", "Stop"]


def test_cutting_relay_cuts_a_reply_the_agent_made(
    live_agent: LiveAgent, cutting_relay: CuttingRelay
) -> None:
    with AgentConnection.open(cutting_relay.path, timeout=5) as conn:
        assert conn.call(p.Hello(), p.HelloReply).protocol == p.PROTOCOL_VERSION
        cutting_relay.cut_next = 1
        with pytest.raises(ae.AgentConnectionError):
            conn.call(p.Status(), p.StatusReply)
    wait_until("the agent counted both requests", lambda: live_agent.counters.requests == 2)
