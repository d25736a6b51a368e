"""Router pins: trust on first use, refusal of a changed key, accept and forget."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from nomyo_agent._pins import PinStore
from nomyo_agent.errors import (
    CorruptIdentityError,
    NotPinnedError,
    PinMismatchError,
)
from support.agent import RunningAgent


def test_first_use_pins_then_a_changed_key_is_refused_until_accepted(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    pins = PinStore(path)
    assert pins.check("https://r", "aa", 1.0) == "new"
    assert pins.check("https://r", "aa", 2.0) == "known"
    with pytest.raises(PinMismatchError) as caught:
        pins.check("https://r", "bb", 3.0)
    assert caught.value.origin == "https://r"
    assert caught.value.fingerprint == "bb"
    assert "pins accept https://r" in caught.value.hint
    # the refusal survives a restart, with the offered key remembered as pending
    reloaded = PinStore(path)
    assert reloaded.list()[0].pending_fingerprint == "bb"
    with pytest.raises(PinMismatchError):
        reloaded.check("https://r", "bb", 4.0)
    assert reloaded.accept("https://r", None, 5.0) == "bb"
    assert reloaded.check("https://r", "bb", 6.0) == "known"
    assert path.stat().st_mode & 0o777 == 0o600


def test_accept_without_a_pending_key_and_forget_of_unknown_origin_fail(tmp_path: Path) -> None:
    pins = PinStore(tmp_path / "pins.json")
    with pytest.raises(NotPinnedError):
        pins.accept("https://r", None, 1.0)
    with pytest.raises(NotPinnedError):
        pins.forget("https://r")
    pins.check("https://r", "aa", 1.0)
    pins.forget("https://r")
    assert pins.check("https://r", "cc", 2.0) == "new"


def test_a_corrupt_pins_file_is_an_error_not_an_empty_trust_list(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_text("{not json")
    with pytest.raises(CorruptIdentityError, match="corrupt"):
        PinStore(path)


# --- two agents sharing one state folder ----------------------------------------------------------

# One process of many, each pinning its own origins through its own PinStore, loaded up front as an
# agent loads it at start.
_WRITER = r"""
import sys
from pathlib import Path
from nomyo_agent._pins import PinStore
path, name = Path(sys.argv[1]), sys.argv[2]
store = PinStore(path)
for i in range(25):
    store.check(f"https://{name}-{i}.example", "fp-" + name, float(i))
"""


def test_concurrent_writers_lose_no_pin(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pins.json"
    names = [f"w{n}" for n in range(6)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name], stderr=subprocess.PIPE)
        for name in names
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    origins = {pin.origin for pin in PinStore(path).list()}
    assert origins == {f"https://{n}-{i}.example" for n in names for i in range(25)}
    assert not [f for f in path.parent.iterdir() if f.name.startswith(".")]  # no temp leftovers


def _seal(agent: RunningAgent, origin: str, pem: str) -> p.SealReply:
    with agent.connect() as conn:
        return conn.call(p.Seal(origin=origin, router_key_pem=pem, plaintext=b"{}"), p.SealReply)


def _accept(agent: RunningAgent, origin: str, pem: str) -> None:
    with agent.connect() as conn:
        conn.call(p.PinAccept(origin=origin, router_key_pem=pem), p.Accepted)


def _origins(agent: RunningAgent) -> set[str]:
    with agent.connect() as conn:
        return {pin.origin for pin in conn.call(p.PinsList(), p.PinsReply).pins}


def test_two_agents_sharing_a_state_folder(make_agent: Callable[..., RunningAgent]) -> None:
    first = make_agent(name="first")
    first.keygen()
    second = make_agent(name="second")  # loads the (empty) pins now, as an agent does at start
    with second.connect() as conn:
        conn.call(p.Unlock(), p.Ok)
    old, new = (_keys.public_pem(rsa.generate_private_key(65537, 2048).public_key()) for _ in "ab")
    assert _seal(first, "https://a.example", old).pinned == "new"
    # The second agent must not trust a different key on "first use": the first agent pinned it.
    with pytest.raises(PinMismatchError):
        _seal(second, "https://a.example", new)
    _accept(first, "https://b.example", old)
    _accept(second, "https://c.example", new)
    assert _seal(first, "https://d.example", new).pinned == "new"
    expected = {f"https://{x}.example" for x in "abcd"}
    assert _origins(first) == _origins(second) == expected
    state = Path(first.env["XDG_STATE_HOME"]) / "nomyo-agent" / "pins.json"
    assert set(json.loads(state.read_bytes())) == expected
