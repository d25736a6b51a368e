"""Idle timeout and maximum lifetime, on an injected clock (no sleeps)."""

from __future__ import annotations

import sys
import time
import types

import pytest

from nomyo_agent import protocol as p
from nomyo_agent._state import AgentState, Peer, SystemClock
from support.fakes import FakeClock


class Key:
    """Stands for an UnlockedKey: the state only needs to close it."""

    closed = False

    def close(self) -> None:
        self.closed = True


INFO = types.SimpleNamespace(fingerprint="ab" * 32)
PEER = Peer(pid=42, uid=0, gid=0, exe="app.py (python3)")


def unlocked(clock: FakeClock, idle: float, life: float) -> tuple[AgentState, Key]:
    state = AgentState(clock=clock, idle_timeout=idle, max_lifetime=life, info=INFO)  # type: ignore[arg-type]
    key = Key()
    state.set_unlocked(key, "unlock")  # type: ignore[arg-type]
    return state, key


def test_idle_timeout_locks_and_use_restarts_it() -> None:
    clock = FakeClock()
    state, key = unlocked(clock, idle=60, life=0)
    clock.advance(59)
    assert state.check_timers() is None
    state.touch(PEER)  # a seal or open restarts the idle timer
    clock.advance(59)
    assert state.check_timers() is None
    assert state.time_left()[0] == pytest.approx(1)
    clock.advance(1)
    assert state.check_timers() == "idle_timeout"
    assert key.closed
    assert state.state is p.State.LOCKED
    assert state.key is None


def test_max_lifetime_locks_even_when_used() -> None:
    clock = FakeClock()
    state, key = unlocked(clock, idle=60, life=100)
    for _ in range(4):
        clock.advance(30)
        state.touch(PEER)
        if clock.t - 1000 < 100:
            assert state.check_timers() is None
    assert state.check_timers() == "max_lifetime"
    assert key.closed


def test_zero_turns_timeouts_off() -> None:
    clock = FakeClock()
    state, key = unlocked(clock, idle=0, life=0)
    clock.advance(10**9)
    assert state.check_timers() is None
    assert state.next_deadline() is None
    assert not key.closed


@pytest.mark.skipif(sys.platform != "linux", reason="CLOCK_BOOTTIME is Linux's")
def test_suspend_counts_because_the_clock_is_boottime(monkeypatch: pytest.MonkeyPatch) -> None:
    # CLOCK_MONOTONIC stops during suspend; only BOOTTIME makes a suspended laptop lock on resume.
    # On a machine that never slept both read the same, so the test asks which clock was read.
    asked: list[int] = []
    real = time.clock_gettime

    def recording(clock_id: int) -> float:
        asked.append(clock_id)
        return real(clock_id)

    monkeypatch.setattr(time, "clock_gettime", recording)
    monkeypatch.setattr(time, "monotonic", lambda: pytest.fail("read CLOCK_MONOTONIC"))
    SystemClock().now()
    assert asked == [time.CLOCK_BOOTTIME]


def test_watchers_hear_locks() -> None:
    clock = FakeClock()
    state, _ = unlocked(clock, idle=10, life=0)
    heard: list[p.StateEvent] = []
    state.watchers.add(heard.append)
    clock.advance(10)
    state.check_timers()
    assert [(e.state, e.reason) for e in heard] == [(p.State.LOCKED, "idle_timeout")]
    assert state.lock("lock") is False  # already locked: nothing to say
    assert len(heard) == 1


def test_recent_clients_are_tracked_since_unlock() -> None:
    clock = FakeClock()
    state, _ = unlocked(clock, idle=0, life=0)
    for pid in range(20):
        state.touch(Peer(pid=pid, uid=0, gid=0, exe=f"app{pid}"))
    state.touch(Peer(pid=3, uid=0, gid=0, exe="app3"))
    event = state.event("x")
    assert event.served_since_unlock == 21
    assert event.recent_clients[0].exe == "app3"
    assert len(event.recent_clients) == 16
    state.set_unlocked(Key(), "unlock")  # type: ignore[arg-type]
    assert state.served_since_unlock == 0


def test_apps_named_by_one_process_are_told_apart_and_reported_once_per_unlock() -> None:
    clock = FakeClock()
    state, _ = unlocked(clock, idle=0, life=0)
    proxy = Peer(pid=7, uid=0, gid=0, exe="nomyo-proxy")
    first_uses: list[str] = []
    state.on_first_use.append(first_uses.append)
    state.touch(proxy, "editor")
    state.touch(proxy, "chat-ui")
    state.touch(proxy, "editor")
    state.touch(PEER)
    state.touch(proxy, "bad\x1b[2Jname\n" + "x" * 100)  # a peer-given name is display-safe
    names = [c.exe for c in state.event("x").recent_clients]
    assert names[:4] == [
        "nomyo-proxy: bad?[2Jname?" + "x" * 52,
        "app.py (python3)",
        "nomyo-proxy: editor",
        "nomyo-proxy: chat-ui",
    ]
    assert first_uses == ["nomyo-proxy: editor", "nomyo-proxy: chat-ui", "app.py (python3)",
                          names[0]]  # fmt: skip
    state.set_unlocked(Key(), "unlock")  # type: ignore[arg-type]
    state.touch(proxy, "editor")
    assert first_uses[-1] == "nomyo-proxy: editor"  # a new unlock reports it again
