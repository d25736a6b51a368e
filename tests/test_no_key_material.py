"""The thin client never touches key material: a fresh interpreter imports ``nomyo_client`` and
completes a real request without ``cryptography`` in ``sys.modules``, and after the request its
memory (read from /proc/PID/mem) holds neither prime of the agent's key.

The test makes the key itself and imports its PEM into the agent, so it knows p and q. A positive
control runs the same search on a process that loads that PEM with ``cryptography``: the search
must find the primes there, or it proves nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_devserver import DevServer
from support.agent import RunningAgent
from support.memory import found

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/mem")

# A client process: one full request, then it reports and waits for the test to read its memory.
CLIENT = r"""
import asyncio, json, sys
import nomyo_client
before = sorted(m for m in sys.modules if m.split(".")[0] in ("cryptography", "_cffi_backend"))

async def main():
    async with nomyo_client.SecureChatCompletion(sys.argv[1], allow_http=True,
                                                 autostart=False) as client:
        return await client.create(model="devserver/echo",
                                   messages=[{"role": "user", "content": "secret question"}])

answer = asyncio.run(main())
after = sorted(m for m in sys.modules if m.split(".")[0] in ("cryptography", "_cffi_backend"))
print(json.dumps({"before": before, "after": after,
                  "content": answer["choices"][0]["message"]["content"]}), flush=True)
sys.stdin.readline()
"""

# The positive control: the same key loaded the way the public client holds its key.
HOLDER = r"""
import sys
from cryptography.hazmat.primitives import serialization
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), password=None)
print("{}", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def known_key(agent: RunningAgent, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """An agent holding a key this test made; yields its PEM file and the primes as needles."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.private_numbers()
    pem = tmp_path / "private_key.pem"
    pem.write_bytes(
        key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    )
    agent.cli("import", str(pem), "--no-passphrase")
    needles: dict[str, bytes] = {}
    for name, prime in (("p", numbers.p), ("q", numbers.q)):
        size = (prime.bit_length() + 7) // 8
        # A 32-byte window from the middle: found whether or not the number is stored whole.
        needles[f"{name} big-endian"] = prime.to_bytes(size, "big")[48:80]
        needles[f"{name} little-endian"] = prime.to_bytes(size, "little")[48:80]
    return pem, needles


def _run_and_scan(
    argv: list[str], env: dict[str, str], needles: dict[str, bytes]
) -> tuple[dict[str, object], set[str]]:
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the child failed:\n{proc.stderr.read() if proc.stderr else ''}")
        return json.loads(line), found(proc.pid, needles)
    finally:
        try:
            proc.communicate(input="\n", timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_client_imports_no_cryptography_and_holds_no_primes(
    agent: RunningAgent, known_key: tuple[Path, dict[str, bytes]]
) -> None:
    pem, needles = known_key
    env = {**agent.env, "NOMYO_AGENT_SOCK": agent.path}
    with DevServer(key_bits=2048) as router:
        report, found = _run_and_scan([sys.executable, "-c", CLIENT, router.url], env, needles)
    assert report["content"] == "echo: secret question"  # a full request really happened
    assert report["before"] == []
    assert report["after"] == []
    assert found == set(), f"the client process holds {sorted(found)} of the agent's key"

    # Positive control: the same search finds the primes in a process that holds the key.
    _, held = _run_and_scan([sys.executable, "-c", HOLDER, str(pem)], env, needles)
    assert {"p little-endian", "q little-endian"} <= held or {
        "p big-endian",
        "q big-endian",
    } <= held
