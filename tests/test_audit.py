"""The audit log keeps what matters: refusals are coalesced and never push state changes out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent import _audit, _keys
from nomyo_agent import protocol as p
from nomyo_agent.errors import PinMismatchError
from support.agent import RunningAgent

ORIGIN = "http://127.0.0.1:9"


def _pem() -> str:
    return _keys.public_pem(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_12000_refusals_of_one_key_are_a_line_or_two_and_state_changes_stay(
    agent: RunningAgent,
) -> None:
    agent.keygen()
    agent.cli("lock")
    agent.cli("unlock")
    pinned, other = _pem(), _pem()
    with agent.connect() as conn:
        conn.call(p.Seal(origin=ORIGIN, router_key_pem=pinned, plaintext=b"{}"), p.SealReply)
        refused = p.Seal(origin=ORIGIN, router_key_pem=other, plaintext=b"{}")
        for _ in range(12000):
            assert isinstance(conn.request(refused), p.Error)
        with pytest.raises(PinMismatchError):
            conn.call(p.Seal(origin=ORIGIN, router_key_pem=other, plaintext=b"{}"), p.SealReply)
    agent.cli("lock")
    agent.stop()
    path = Path(agent.env["XDG_STATE_HOME"]) / "nomyo-agent" / "audit.log"
    events = lines(path)
    refusals = [e for e in events if e["event"] == "pin_mismatch"]
    assert len(refusals) == 2, refusals[:3]
    assert sum(int(e.get("count", 1)) for e in refusals) == 12001  # type: ignore[call-overload]
    assert {e["origin"] for e in refusals} == {ORIGIN}
    assert refusals[1]["since"] == refusals[0]["time"]
    assert len({e["refused_fingerprint"] for e in refusals}) == 1
    names = [e["event"] for e in events if e["event"] != "pin_mismatch"]
    assert names == ["generate", "lock", "unlock", "app", "lock", "stopping"]
    assert not path.with_name("audit.log.1").exists()


def test_rotation_never_evicts_state_changes_for_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_audit, "MAX_BYTES", 8192)
    path = tmp_path / "audit.log"
    audit = _audit.AuditLog(path)

    def event(reason: str, origin: str | None = None) -> p.StateEvent:
        return p.StateEvent(state=p.State.UNLOCKED, reason=reason, fingerprint="ab" * 32,
                            origin=origin)  # fmt: skip

    audit.record(event("generate"), 1.0)
    audit.record(event("unlock"), 2.0)
    for i in range(3000):  # distinct origins: nothing to coalesce, the file must rotate
        audit.record(event("pin_mismatch", f"https://r{i}.example"), 3.0 + i)
    audit.record(event("lock"), 5000.0)
    assert path.with_name("audit.log.1").exists()
    assert path.stat().st_size <= 8192
    kept = [e["event"] for e in lines(path) if e["event"] != "pin_mismatch"]
    assert kept == ["generate", "unlock", "lock"]
