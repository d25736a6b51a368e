"""Issue 13, item 4: a machine with no Secret Service (a server, CI, a container).

With the keyring as the store, `keygen` fails at once, before any prompt, with a hint that
names the headless store. With ``--keystore file`` the identity lives passphrase-encrypted in a
0600 file in the state folder, in the very format the keyring entry has, and survives a
restart. Real agents on an environment with no session bus; the console scripts as users run
them.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from nomyo_agent import protocol as p
from nomyo_agent._keys import fingerprint
from support.agent import RunningAgent
from support.console import console
from support.devserver import RunningDevServer

PASS = "a long headless passphrase"


def cli(agent: RunningAgent, *args: str, stdin: str = "") -> tuple[int, str]:
    out = console("nomyo-agent", "--socket", agent.path, *args, env=agent.env, stdin=stdin)
    return out.returncode, out.stdout + out.stderr


def test_no_keyring_fails_before_the_passphrase_prompt(
    make_agent: Callable[..., RunningAgent], no_bus_env: dict[str, str], tmp_path: Path
) -> None:
    asked = tmp_path / "pinentry-was-run"
    pinentry = tmp_path / "pinentry"
    pinentry.write_text(f"#!/bin/sh\ntouch {asked}\nexit 1\n")
    pinentry.chmod(0o755)
    agent = make_agent(env=no_bus_env, args=["--pinentry", str(pinentry)])
    out = console(
        "nomyo-agent", "--socket", agent.path, "keygen", "--bits", "2048",
        env={**agent.env, "DISPLAY": ":99"},  # a display, so the agent would ask there
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    first, hint = out.stderr.strip().splitlines()
    assert "keyring" in first
    assert 'keystore = "file"' in hint
    assert "--keystore file" in hint
    assert not asked.exists()  # nobody was asked for a passphrase that could not be used


def test_the_file_keystore_end_to_end(
    make_agent: Callable[..., RunningAgent],
    no_bus_env: dict[str, str],
    devserver: RunningDevServer,
) -> None:
    agent = make_agent(env=no_bus_env, args=["--keystore", "file"])
    key_file = Path(no_bus_env["XDG_STATE_HOME"]) / "nomyo-agent" / "identity.key"

    code, text = cli(agent, "keygen", "--bits", "2048", "--no-passphrase")
    assert code == 1, text
    assert "keeps only passphrase-protected keys" in text
    assert not key_file.exists()

    code, text = cli(agent, "keygen", "--bits", "2048", "--passphrase-stdin", stdin=PASS + "\n")
    assert code == 0, text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    pem = key_file.read_bytes()
    # The keyring entry's format: passphrase-encrypted PKCS#8, opened by any PKCS#8 reader.
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    key = load_pem_private_key(pem, PASS.encode())
    status = agent.status()
    assert status.fingerprint == fingerprint(key.public_key())  # type: ignore[arg-type]
    assert status.keyring_backend == f"file {key_file}"
    code, text = cli(agent, "status")
    assert f"keyring:      file {key_file}\n" in text

    env = {**agent.env, "NOMYO_AGENT_SOCK": agent.path, "NOMYO_AGENT_AUTOSTART": "0"}
    chat = ("nomyo-chat", "--base-url", devserver.url, "--allow-http", "-m", "devserver/echo")
    assert console(*chat, "hi", env=env).stdout == "echo: hi\n"

    # A restart: the key is read back from the file and unlocked with the passphrase.
    agent.stop()
    again = make_agent(env=no_bus_env, args=["--keystore", "file"], name="again")
    assert again.status().state is p.State.LOCKED
    code, text = cli(again, "unlock", "--passphrase-stdin", stdin="wrong\n")
    assert code == 1
    code, text = cli(again, "unlock", "--passphrase-stdin", stdin=PASS + "\n")
    assert code == 0, text
    env["NOMYO_AGENT_SOCK"] = again.path
    assert console(*chat, "again", env=env).stdout == "echo: again\n"
