"""The client's stand-ins (``support/client_fakes.py``) checked on their own, so that a broken
fake cannot make the client tests pass."""

from __future__ import annotations

import base64
import json

import pytest

from nomyo_agent import errors as ae
from nomyo_agent import protocol as p
from support.client_fakes import OUR_PEM, ROUTER_PEM, ROUTER_PEM_2, FakeAgent, fake_open, fake_seal


def test_fake_envelope_refuses_other_recipient_and_bad_tag() -> None:
    package = fake_seal(b"hello", OUR_PEM)
    assert fake_open(package, OUR_PEM) == b"hello"
    with pytest.raises(ValueError, match="other recipient"):
        fake_open(package, ROUTER_PEM)
    data = json.loads(package)
    data["encrypted_payload"]["ciphertext"] = base64.b64encode(b"jello").decode()
    with pytest.raises(ValueError, match="bad tag"):
        fake_open(json.dumps(data).encode(), OUR_PEM)


def test_fake_agent_speaks_the_protocol(fake_agent: FakeAgent) -> None:
    from nomyo_agent.connection import AgentConnection

    with AgentConnection.open(fake_agent.path, timeout=5) as conn:
        hello = conn.call(p.Hello(), p.HelloReply)
        assert hello.protocol == p.PROTOCOL_VERSION
        sealed = conn.call(p.Seal(origin="http://x", router_key_pem=ROUTER_PEM,
                                  plaintext=b"{}"), p.SealReply)  # fmt: skip
        assert fake_open(sealed.package, ROUTER_PEM) == b"{}"
        with pytest.raises(ae.PinMismatchError):
            conn.call(p.Seal(origin="http://x", router_key_pem=ROUTER_PEM_2,
                             plaintext=b"{}"), p.SealReply)  # fmt: skip
        with pytest.raises(ae.DecryptFailedError):
            conn.call(p.Open(package=sealed.package), p.OpenReply)
