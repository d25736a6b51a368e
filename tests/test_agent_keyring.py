"""The agent against the real keyring's failure modes, and the migration from the public client:
each failure is a specific error with a hint, and the agent keeps serving."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from support.agent import RunningAgent
from support.desktop import Session
from support.peer import peer_python

MAKE_PUBLIC_CLIENT_KEY = """
import sys
from nomyo.SecureCompletionClient import SecureCompletionClient
client = SecureCompletionClient(router_url="https://router.invalid")
client.key_size = 2048
client.generate_keys(save_to_file=True, key_dir=sys.argv[1], password=sys.argv[2] or None)
"""


def test_no_keyring_at_all_is_a_clear_error_and_the_agent_stays_up(
    make_agent: Callable[..., RunningAgent], no_bus_env: dict[str, str]
) -> None:
    agent = make_agent(env=no_bus_env)
    out = agent.cli("keygen", "--bits", "2048", "--no-passphrase", check=False)
    assert out.returncode == 1
    first, hint = out.stderr.strip().splitlines()[:2]
    assert first.startswith("nomyo-agent: ")
    assert "keyring" in first.lower()
    assert hint.startswith("hint: ")
    assert agent.status().state is p.State.NO_IDENTITY


def test_a_locked_keyring_is_named(desktop: Session, agent: RunningAgent) -> None:
    agent.cli("keygen", "--bits", "2048", "--no-passphrase")
    agent.cli("lock")
    desktop.lock_keyring()  # as a screen locker would
    out = agent.cli("unlock", "--passphrase-stdin", check=False)
    assert out.returncode == 1
    assert "locked" in out.stderr.splitlines()[0]
    assert "hint: unlock your login keyring" in out.stderr
    assert agent.status().state is p.State.LOCKED


def test_a_corrupt_stored_key_is_named(desktop: Session, agent: RunningAgent) -> None:
    agent.cli("keygen", "--bits", "2048", "--no-passphrase")
    agent.cli("lock")
    spoil = "import keyring; keyring.set_password('nomyo-agent', 'identity', 'not a key')"
    subprocess.run([sys.executable, "-c", spoil], env=desktop.env, check=True, timeout=30)
    out = agent.cli("unlock", "--passphrase-stdin", check=False)
    assert out.returncode == 1
    assert "--force" in out.stderr
    assert agent.status().state is p.State.LOCKED


def test_migrating_the_public_clients_key_file(agent: RunningAgent, tmp_path: Path) -> None:
    """`nomyo-agent import client_keys/private_key.pem` keeps the same identity (fingerprint)."""
    subprocess.run(
        [peer_python(), "-c", MAKE_PUBLIC_CLIENT_KEY, str(tmp_path / "client_keys"), "pw ü"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pem = tmp_path / "client_keys" / "private_key.pem"
    public = serialization.load_pem_public_key((pem.parent / "public_key.pem").read_bytes())
    expected = _keys.fingerprint(public)  # type: ignore[arg-type]

    wrong = agent.cli("import", str(pem), "--passphrase-stdin", input=b"nope\n", check=False)
    assert wrong.returncode == 1
    assert agent.status().state is p.State.NO_IDENTITY

    out = agent.cli("import", str(pem), "--passphrase-stdin", input="pw ü\n".encode())
    assert f"imported RSA-2048 identity {expected}" in out.stderr
    status = agent.status()
    assert (status.state, status.fingerprint) == (p.State.UNLOCKED, expected)
    assert status.passphrase_protected  # the file's password protects it in the keyring too

    # importing the same key again is not a conflict (a client's load_keys may do it each start)
    again = agent.cli("import", str(pem), "--passphrase-stdin", input="pw ü\n".encode())
    assert expected in again.stderr
    other = tmp_path / "other.pem"
    other.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    refused = agent.cli("import", str(other), "--no-passphrase", check=False)
    assert refused.returncode == 1
    assert "an identity exists already" in refused.stderr
    assert agent.status().fingerprint == expected
    agent.cli("lock")
    agent.cli("unlock", "--passphrase-stdin", input="pw ü\n".encode())
    assert agent.status().state is p.State.UNLOCKED
