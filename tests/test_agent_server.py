"""The real agent over its real socket: permissions, lifecycle, sealing, pins and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent import _envelope, _keys
from nomyo_agent import protocol as p
from nomyo_agent._peer import _exe_name
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import (
    AgentUnavailableError,
    BadRequestError,
    BadRouterKeyError,
    DecryptFailedError,
    LockedError,
    NoIdentityError,
    PinMismatchError,
)
from support.agent import RunningAgent, start_agent
from support.desktop import Session
from support.keys import rsa_key

ROUTER = rsa_key(2048, 0)
ROUTER_PEM = _keys.public_pem(ROUTER.public_key())
ORIGIN = "http://127.0.0.1:9"


def raw(agent: RunningAgent) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(agent.path)
    return sock


def read_reply(sock: socket.socket) -> p.Response:
    header = sock.recv(4, socket.MSG_WAITALL)
    (n,) = struct.unpack(">I", header)
    return p.decode_response(sock.recv(n, socket.MSG_WAITALL))


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# --- the socket ----------------------------------------


def test_socket_is_private_from_creation(agent: RunningAgent) -> None:
    folder = Path(agent.path).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(agent.path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(agent.path).st_mode)


def test_a_live_agent_is_never_stolen_and_a_dead_ones_socket_is_replaced(
    desktop: Session, agent: RunningAgent
) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "nomyo_agent", "serve", "--socket", agent.path],
        env=agent.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert agent.status().pid == agent.pid  # still the first one

    agent.proc.kill()  # no chance to clean up: the socket file stays behind
    agent.proc.wait()
    assert os.path.exists(agent.path)
    with pytest.raises(AgentUnavailableError):
        AgentConnection.open(agent.path)
    again = start_agent(desktop)
    try:
        assert again.path == agent.path
        assert again.status().pid == again.pid
    finally:
        again.stop()


def test_sigterm_exits_cleanly_and_removes_the_socket(agent: RunningAgent) -> None:
    assert agent.stop() == 0
    assert not os.path.exists(agent.path)
    assert "stopping" in agent.log_text()


def test_sigterm_lets_a_request_in_flight_finish(
    make_agent: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    # The request in flight is an unlock waiting on a pinentry that the test holds: it answers
    # only when the test writes the passphrase into a FIFO, after the agent has begun stopping.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    pinentry = tmp_path / "gated-pinentry"
    pinentry.write_text(
        "#!/bin/sh\n"
        "echo OK\n"
        "while IFS= read -r line; do\n"
        '  case "$line" in\n'
        f'    GETPIN) read -r pin < "{gate}"; echo "D $pin"; echo OK;;\n'
        "    BYE) echo OK; exit 0;;\n"
        "    *) echo OK;;\n"
        "  esac\n"
        "done\n"
    )
    pinentry.chmod(0o700)
    agent = make_agent(args=["--pinentry", str(pinentry)])
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=b"pw\n")
    agent.cli("lock")
    with agent.connect(timeout=60) as conn:
        conn.send(p.Unlock(pinentry=p.PinEntry(env={"DISPLAY": ":4242"})))
        with gate.open("w") as held:  # opens once the pinentry waits in GETPIN
            agent.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while "stopping" not in agent.log_text():
                assert time.monotonic() < deadline, agent.log_text()
                time.sleep(0.02)
            assert agent.proc.poll() is None  # stopping, yet waiting for the unlock
            held.write("pw\n")
        reply = conn.receive()
    assert isinstance(reply, p.Ok), reply
    assert agent.proc.wait(timeout=20) == 0


def test_stop_command_and_start_is_idempotent(desktop: Session) -> None:
    path = str(desktop.runtime_dir / "nomyo-agent" / "started.sock")
    env = {**desktop.env, "NOMYO_AGENT_SOCK": path}
    cmd = [sys.executable, "-m", "nomyo_agent", "start"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert first.stdout.startswith(f"NOMYO_AGENT_SOCK={path}; export NOMYO_AGENT_SOCK;")
    pid = int(first.stdout.split("pid ")[1].rstrip(";\n"))
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert f"already running, pid {pid}" in second.stdout
    with AgentConnection.open(path) as conn:
        assert conn.call(p.Hello(), p.HelloReply).pid == pid
    stop = subprocess.run(
        [sys.executable, "-m", "nomyo_agent", "stop"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path)
    assert gone(pid)


def test_no_agent_is_exit_code_3_with_a_hint(desktop: Session) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nomyo_agent", "--socket", "/nonexistent/agent.sock", "status"],
        env=desktop.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 3
    assert out.stderr.startswith("nomyo-agent: no agent is listening at /nonexistent/agent.sock")
    assert "hint: start it with `nomyo-agent start`" in out.stderr


# --- identity, lock, seal, open ----------------------------------------


def test_fresh_agent_has_no_identity_and_refuses_to_seal(agent: RunningAgent) -> None:
    assert agent.status().state is p.State.NO_IDENTITY
    with agent.connect() as conn, pytest.raises(NoIdentityError) as caught:
        conn.call(p.Seal(origin=ORIGIN, router_key_pem=ROUTER_PEM, plaintext=b"{}"), p.SealReply)
    assert "nomyo-agent keygen" in caught.value.hint


def test_keygen_status_lock_unlock_through_the_cli(agent: RunningAgent) -> None:
    out = agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=b"s3cret pw\n")
    assert "generated RSA-2048 identity" in out.stderr
    assert "no passphrase" not in out.stderr
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["state"] == "unlocked"
    assert status["bits"] == 2048
    assert len(status["fingerprint"]) == 64
    assert status["pid"] == agent.pid
    assert status["protocol"] == p.PROTOCOL_VERSION
    assert status["passphrase_protected"] is True
    for key in ("idle_timeout", "max_lifetime", "hardening", "counters"):
        assert key in status
    assert agent.cli("public-key", "--fingerprint").stdout.strip() == status["fingerprint"]

    agent.cli("lock")
    assert agent.status().state is p.State.LOCKED
    with agent.connect() as conn, pytest.raises(LockedError) as caught:
        conn.call(p.Open(package=b"{}"), p.OpenReply)
    assert "nomyo-agent unlock" in caught.value.hint

    wrong = agent.cli("unlock", "--passphrase-stdin", input=b"nope\n", check=False)
    assert wrong.returncode == 1
    assert "wrong passphrase" in wrong.stderr
    assert agent.status().state is p.State.LOCKED
    agent.cli("unlock", "--passphrase-stdin", input=b"s3cret pw\n")
    status2 = agent.status()
    assert status2.state is p.State.UNLOCKED
    assert status2.counters.failed_unlocks == 1


def test_keygen_refuses_to_replace_without_force_and_warns_without_passphrase(
    agent: RunningAgent,
) -> None:
    out = agent.cli("keygen", "--bits", "2048", "--no-passphrase")
    assert "the OS keyring's own protection is all" in out.stderr
    again = agent.cli("keygen", "--bits", "2048", "--no-passphrase", check=False)
    assert again.returncode == 1
    assert "an identity exists already" in again.stderr
    assert "--force" in again.stderr
    small = agent.cli("keygen", "--bits", "1024", "--no-passphrase", "--force", check=False)
    assert small.returncode == 2  # a usage error, refused before the agent is asked


def test_identity_survives_an_agent_restart_locked(desktop: Session, agent: RunningAgent) -> None:
    fp = agent.keygen().fingerprint
    agent.stop()
    again = start_agent(desktop)
    try:
        status = again.status()
        assert (status.state, status.fingerprint) == (p.State.LOCKED, fp)  # public half on disk
        again.cli("unlock", "--passphrase-stdin", input=b"")  # no passphrase: keyring only
        assert again.status().state is p.State.UNLOCKED
    finally:
        again.stop()


def test_seal_and_open_round_trip_with_tofu_pins(agent: RunningAgent) -> None:
    ident = agent.keygen()
    with agent.connect() as conn:
        sealed = conn.call(
            p.Seal(origin=ORIGIN + "/v1", router_key_pem=ROUTER_PEM, plaintext=b'{"q":1}'),
            p.SealReply,
        )
        assert sealed.pinned == "new"
        assert sealed.fingerprint == ident.fingerprint
        assert sealed.public_key_pem == ident.public_key_pem
        assert _envelope.open_package(ROUTER, sealed.package).plaintext == b'{"q":1}'

        agent_key = _keys.load_router_key(ident.public_key_pem)
        answer = _envelope.seal(agent_key, b'{"a":2}', processed_at=123.0)
        opened = conn.call(p.Open(package=answer), p.OpenReply)
        assert (opened.plaintext, opened.processed_at) == (b'{"a":2}', 123.0)

        again = conn.call(
            p.Seal(origin=ORIGIN, router_key_pem=ROUTER_PEM, plaintext=b"{}"), p.SealReply
        )
        assert again.pinned == "known"

        other = _keys.public_pem(rsa_key(2048, 1).public_key())
        with pytest.raises(PinMismatchError) as caught:
            conn.call(p.Seal(origin=ORIGIN, router_key_pem=other, plaintext=b"{}"), p.SealReply)
        assert caught.value.origin == ORIGIN
        assert f"nomyo-agent pins accept {ORIGIN}" in caught.value.hint

    listing = agent.cli("pins", "list").stdout
    assert "CHANGED KEY OFFERED" in listing
    agent.cli("pins", "accept", ORIGIN)
    with agent.connect() as conn:
        assert (
            conn.call(
                p.Seal(origin=ORIGIN, router_key_pem=other, plaintext=b"{}"), p.SealReply
            ).pinned
            == "known"
        )
    status = agent.status()
    assert status.counters.seals == 3
    assert status.counters.opens == 1
    assert status.served_since_unlock == 4
    assert status.recent_clients[0].pid == os.getpid()


def test_pin_policy_off_seals_to_any_key(make_agent: object) -> None:
    agent = make_agent(args=["--pin-policy", "off"])  # type: ignore[operator]
    agent.keygen()
    with agent.connect() as conn:
        for i in range(2):
            other = _keys.public_pem(rsa_key(2048, 1 + i).public_key())
            reply = conn.call(
                p.Seal(origin=ORIGIN, router_key_pem=other, plaintext=b"{}"), p.SealReply
            )
            assert reply.pinned == "off"


def test_open_failures_are_one_opaque_error(agent: RunningAgent) -> None:
    ident = agent.keygen()
    good = _envelope.seal(_keys.load_router_key(ident.public_key_pem), b"x")
    other = _envelope.seal(ROUTER.public_key(), b"x")
    tampered = json.loads(good)
    tampered["encrypted_payload"]["tag"] = "AAAAAAAAAAAAAAAAAAAAAA=="
    messages = set()
    with agent.connect() as conn:
        for package in (b"garbage", other, json.dumps(tampered).encode(), good[:-5]):
            with pytest.raises(DecryptFailedError) as caught:
                conn.call(p.Open(package=package), p.OpenReply)
            messages.add(caught.value.message)
        assert conn.call(p.Open(package=good), p.OpenReply).plaintext == b"x"
    assert len(messages) == 1


def test_bad_router_keys_are_refused(agent: RunningAgent) -> None:
    agent.keygen()
    small = _keys.public_pem(rsa.generate_private_key(65537, 1024).public_key())  # noqa: S505
    with agent.connect() as conn:
        for pem in ("not a pem", ROUTER_PEM.replace("A", "B", 5), small):
            with pytest.raises(BadRouterKeyError):
                conn.call(p.Seal(origin=ORIGIN, router_key_pem=pem, plaintext=b""), p.SealReply)
        with pytest.raises(BadRequestError):
            conn.call(
                p.Seal(origin="ftp://x", router_key_pem=ROUTER_PEM, plaintext=b""), p.SealReply
            )


# --- bad input ----------------------------------------


def test_invalid_requests_get_errors_and_the_connection_stays_usable(agent: RunningAgent) -> None:
    with raw(agent) as sock:
        for body in (
            b"\xc1",  # not msgpack
            msgspec.msgpack.encode({"op": "format_disk"}),
            msgspec.msgpack.encode({"op": "seal", "origin": 5}),
            msgspec.msgpack.encode([1, 2, 3]),
        ):
            sock.sendall(struct.pack(">I", len(body)) + body)
            reply = read_reply(sock)
            assert isinstance(reply, p.Error)
            assert reply.code is p.ErrorCode.BAD_REQUEST
        sock.sendall(p.encode_frame(p.Status()))
        assert isinstance(read_reply(sock), p.StatusReply)


def test_hello_from_another_protocol_version_gets_the_agents_own(agent: RunningAgent) -> None:
    with agent.connect() as conn:
        reply = conn.call(p.Hello(protocol=p.PROTOCOL_VERSION + 1), p.HelloReply)
    assert reply.protocol == p.PROTOCOL_VERSION  # the client compares and decides
    assert reply.autostarted is False
    assert reply.pid == agent.pid


def test_oversized_frames_and_half_frames_close_only_that_connection(agent: RunningAgent) -> None:
    bystander = agent.connect()
    with raw(agent) as sock:
        sock.sendall(struct.pack(">I", p.MAX_FRAME_BYTES + 1))
        assert closed_by_peer(sock)
    half = raw(agent)
    half.sendall(struct.pack(">I", 1000) + b"x" * 10)  # then goes quiet
    silent = raw(agent)  # connects and never sends
    with raw(agent) as sock:
        sock.sendall(struct.pack(">I", 100) + b"x" * 10)
        sock.shutdown(socket.SHUT_WR)  # disconnects mid-frame
        assert closed_by_peer(sock)
    assert bystander.call(p.Status(), p.StatusReply).state is p.State.NO_IDENTITY
    half.close()
    silent.close()
    bystander.close()


@pytest.mark.slow
def test_thousands_of_random_frames_do_not_hurt_the_agent(agent: RunningAgent) -> None:
    import random

    rng = random.Random(1234)
    valid = [p.encode(r) for r in (p.Status(), p.Lock(), p.PinsList(), p.PublicKey())]
    sent = 0
    deadline = time.monotonic() + 60
    while sent < 3000 and time.monotonic() < deadline:
        with raw(agent) as sock:
            for _ in range(50):
                kind = rng.random()
                if kind < 0.4:
                    body = rng.randbytes(rng.randint(0, 64))
                elif kind < 0.8:
                    base = bytearray(rng.choice(valid))
                    for _ in range(rng.randint(1, 4)):
                        base[rng.randrange(len(base))] = rng.randrange(256)
                    body = bytes(base)
                else:
                    body = msgspec.msgpack.encode(
                        {"op": rng.choice(["seal", "open", "unlock", "x"]), "f": rng.random()}
                    )
                sent += 1
                if rng.random() < 0.02:  # a lying length header: the agent must hang up
                    sock.sendall(struct.pack(">I", rng.randint(p.MAX_FRAME_BYTES + 1, 2**32 - 1)))
                    break
                sock.sendall(struct.pack(">I", len(body)) + body)
                reply = read_reply(sock)
                assert isinstance(reply, p.Response.__args__)  # type: ignore[attr-defined]
    assert sent >= 3000
    assert agent.proc.poll() is None
    status = agent.status()
    assert status.counters.requests + status.counters.errors > 0


# --- watch ----------------------------------------


def test_watchers_hear_unlock_lock_idle_timeout_and_stop(make_agent: object) -> None:
    agent = make_agent(args=["--idle-timeout", "1"])  # type: ignore[operator]
    agent.keygen()  # unlocked now
    conn = agent.connect(timeout=15)
    events = conn.watch()
    first = next(events)
    assert (first.state, first.reason) == (p.State.UNLOCKED, "watch")
    # the real timer task fires within a second or two of the deadline (the fake clock tests
    # cover the arithmetic; this checks the ticker is wired up)
    timed_out = next(events)
    assert (timed_out.state, timed_out.reason) == (p.State.LOCKED, "idle_timeout")
    agent.cli("unlock", "--passphrase-stdin", input=b"")
    assert next(events).reason == "unlock"
    agent.cli("lock")
    assert next(events).reason == "lock"
    agent.stop()
    assert next(events).reason == "stopping"
    assert next(events, None) is None
    conn.close()


# --- auto-unlock -------------------------------------------------------------------------


def test_an_identity_without_passphrase_unlocks_itself_on_first_use_but_not_after_lock(
    desktop: Session, agent: RunningAgent
) -> None:
    """As a socket-activated agent is: started locked, then a client's first seal must work."""
    agent.keygen()  # no passphrase
    agent.stop()
    again = start_agent(desktop)
    try:
        assert again.status().state is p.State.LOCKED
        with again.connect() as conn:
            events = again.connect()
            watch = events.watch()
            assert next(watch).state is p.State.LOCKED
            seal = p.Seal(origin=ORIGIN, router_key_pem=ROUTER_PEM, plaintext=b"{}")
            assert conn.call(seal, p.SealReply).pinned == "new"
            event = next(watch)
            assert (event.state, event.reason) == (p.State.UNLOCKED, "auto_unlock")
            conn.call(p.Lock(), p.Ok)  # the user's lock holds
            with pytest.raises(LockedError):
                conn.call(seal, p.SealReply)
            conn.call(p.Unlock(), p.Ok)
            assert conn.call(seal, p.SealReply).pinned == "known"
            events.close()
    finally:
        again.stop()


def test_a_passphrase_identity_never_unlocks_itself(desktop: Session, agent: RunningAgent) -> None:
    agent.keygen(passphrase=b"pw")
    agent.stop()
    again = start_agent(desktop)
    try:
        with again.connect() as conn, pytest.raises(LockedError):
            conn.call(p.Seal(origin=ORIGIN, router_key_pem=ROUTER_PEM, plaintext=b""), p.SealReply)
    finally:
        again.stop()


def test_the_audit_log_records_state_changes_without_secrets(agent: RunningAgent) -> None:
    agent.cli("keygen", "--bits", "2048", "--passphrase-stdin", input=b"audit secret\n")
    agent.cli("lock")
    agent.cli("unlock", "--passphrase-stdin", input=b"audit secret\n")
    with agent.connect() as conn:
        conn.call(p.Seal(origin=ORIGIN, router_key_pem=ROUTER_PEM, plaintext=b"{}"), p.SealReply)
        other = _keys.public_pem(rsa_key(2048, 1).public_key())
        with pytest.raises(PinMismatchError):
            conn.call(p.Seal(origin=ORIGIN, router_key_pem=other, plaintext=b"{}"), p.SealReply)
    agent.stop()
    path = Path(agent.env["XDG_STATE_HOME"]) / "nomyo-agent" / "audit.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    names = [e["event"] for e in events]
    # keygen's unlock, the CLI's lock and unlock, this test's first seal (its app's first use
    # since the unlock), the refused key, then one line for the stop (it tells watchers first,
    # then drops the key: the second event, with its state, is logged)
    assert names == ["generate", "lock", "unlock", "app", "pin_mismatch", "stopping"]
    assert next(e for e in events if e["event"] == "app")["app"] == _exe_name(os.getpid())
    assert [e["state"] for e in events][-1] == "locked"
    assert next(e for e in events if e["event"] == "pin_mismatch")["origin"] == ORIGIN
    assert "audit secret" not in text
