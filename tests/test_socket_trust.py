"""Clients trust only their own agent, and agents take over only dead sockets.

Hostile conditions, each with real processes: another uid's fake agent at the temp-dir fallback
path (``XDG_RUNTIME_DIR`` unset, as under ssh without pam_systemd, su, cron), a socket served by
another uid inside our own folder, a loose folder of our own, a symlinked lock file, and a live
agent whose lock file was deleted or that was socket-activated (it has none).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_socket_activation import Activated, activated  # noqa: F401 - the fixture

from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection, AsyncAgentConnection
from nomyo_agent.errors import AgentError, UnsafeSocketError
from nomyo_client._agent import AgentLink
from nomyo_client._errors import AgentUnavailableError as ClientUnavailable
from nomyo_tray._app import TrayApp
from support.agent import RunningAgent
from support.desktop import Session
from support.intruder import (
    AS_NOBODY,
    NOBODY,
    Intruder,
    open_intruder,
    python_for_nobody,
    shared_tmp,
)

SECRET = b"correct horse battery staple"
PEM = b"-----BEGIN PRIVATE KEY-----\nTUlJRXZR\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def fallback_env(desktop: Session) -> Iterator[dict[str, str]]:
    """The victim's environment with no runtime folder: the socket is TMPDIR/nomyo-agent-UID."""
    with shared_tmp() as tmp:
        env = {**desktop.env, "TMPDIR": str(tmp), "NOMYO_AGENT_AUTOSTART": "1"}
        env.pop("XDG_RUNTIME_DIR")
        env.pop("NOMYO_AGENT_SOCK", None)
        yield env


@pytest.fixture
def intruder(fallback_env: dict[str, str]) -> Iterator[Intruder]:
    path = Path(fallback_env["TMPDIR"]) / f"nomyo-agent-{os.getuid()}" / "agent.sock"
    with open_intruder(path) as fake:
        yield fake


def _cli(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "nomyo_agent", *args], env=env, input=stdin,
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(), out.stderr.decode()
    )


def _names_the_folder_and_owner(message: str, folder: str) -> None:
    assert folder in message, message
    assert f"uid {NOBODY}" in message, message


def test_cli_sends_nothing_to_another_uids_socket(
    fallback_env: dict[str, str], intruder: Intruder, tmp_path: Path
) -> None:
    folder = os.path.dirname(intruder.path)
    key = tmp_path / "key.pem"
    key.write_bytes(PEM)
    runs = [
        _cli(fallback_env, "status"),
        _cli(fallback_env, "unlock", "--passphrase-stdin", stdin=SECRET + b"\n"),
        _cli(fallback_env, "import", str(key), "--passphrase-stdin", stdin=SECRET + b"\n"),
        _cli(fallback_env, "lock"),
        _cli(fallback_env, "start"),  # must not adopt the fake, nor start an agent beside it
    ]
    for run in runs:
        assert run.returncode != 0, run
        _names_the_folder_and_owner(run.stderr, folder)
        assert "hint:" in run.stderr
    assert sum(intruder.received()) == 0
    assert sorted(os.listdir(folder)) == ["agent.sock"]  # no lock file of ours in its folder


def test_client_library_sends_nothing_not_even_key_dir(
    fallback_env: dict[str, str],
    intruder: Intruder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "private_key.pem").write_bytes(PEM)
    for name in ("XDG_RUNTIME_DIR", "NOMYO_AGENT_SOCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", fallback_env["TMPDIR"])

    async def seal() -> None:
        link = AgentLink(key_dir=tmp_path, autostart=True)
        try:
            await link.seal("https://router.example", "not a key", b"{}")
        finally:
            await link.aclose()

    with pytest.raises(ClientUnavailable) as info:
        asyncio.run(seal())
    _names_the_folder_and_owner(str(info.value), os.path.dirname(intruder.path))
    with pytest.raises(UnsafeSocketError):
        AgentConnection.open(timeout=5)
    assert sum(intruder.received()) == 0


def test_tray_sends_nothing_and_says_why(
    fallback_env: dict[str, str],
    intruder: Intruder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("XDG_RUNTIME_DIR", "NOMYO_AGENT_SOCK"):
        monkeypatch.delenv(name, raising=False)
    for name in ("TMPDIR", "HOME", "XDG_STATE_HOME", "PATH"):
        monkeypatch.setenv(name, fallback_env[name])
    app = TrayApp()
    watcher = threading.Thread(target=app._watch_loop)
    with caplog.at_level(logging.WARNING, logger="nomyo_tray"):
        watcher.start()
        try:
            deadline = time.monotonic() + 20
            while not any(f"uid {NOBODY}" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the tray never said whose socket it is"
                app._wake.wait(0.05)
        finally:
            app._stop.set()
            app._wake.set()
            watcher.join(timeout=20)
    assert not app.view.connected
    with pytest.raises(UnsafeSocketError):
        app.link.lock()
    with pytest.raises(AgentError, match=f"uid {NOBODY}"):
        app._start_agent()  # "Start agent" in its menu: refused, nothing started beside it
    assert sum(intruder.received()) == 0


def test_socket_served_by_another_uid_in_our_folder(tmp_path: Path) -> None:
    """Our folder passes every check, but the socket file in it is another uid's listener: the
    peer's credentials, read before anything is sent, refuse it."""
    ours = tmp_path / "run"
    ours.mkdir(mode=0o700)
    path = ours / "agent.sock"
    with shared_tmp() as tmp, open_intruder(tmp / "theirs" / "agent.sock") as fake:
        os.rename(fake.path, path)  # the listening inode moves; the fake keeps accepting on it
        with pytest.raises(UnsafeSocketError) as info:
            AgentConnection.open(str(path), timeout=5)
        assert f"uid {NOBODY}" in str(info.value)
        assert str(path) in str(info.value)
        assert info.value.hint

        async def async_open() -> None:
            await AsyncAgentConnection.open(str(path))

        with pytest.raises(UnsafeSocketError):
            asyncio.run(async_open())
        assert fake.next_connections(2) == [0, 0]  # two connections, and not one byte


def _status_as_nobody(
    python: str, extra: dict[str, str], path: str | Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_NOBODY, python, "-m", "nomyo_agent", "--socket", str(path), "status"],
        env={"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8", **extra},
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip


def test_another_uids_status_is_refused_by_its_own_client(agent: RunningAgent) -> None:
    """Issue 9 item 15: uid 65534 runs `nomyo-agent status` at our agent, once through a link in
    a folder it may enter, once at the real path. It is told whose socket that is, by its own
    client, before connecting: not "connection reset by peer"."""
    python, extra = python_for_nobody({})
    before = agent.status().counters.rejected_peers
    with shared_tmp() as tmp:
        folder = tmp / "reachable"
        folder.mkdir(mode=0o755)
        link = folder / "agent.sock"
        os.link(agent.path, link)
        link.chmod(0o666)
        try:
            outs = [_status_as_nobody(python, extra, path) for path in (link, agent.path)]
        finally:
            link.chmod(0o600)
    via_link, direct = outs
    assert via_link.returncode != 0
    assert f"{folder} belongs to uid 0" in via_link.stderr, via_link.stderr
    assert direct.returncode != 0
    assert os.path.dirname(agent.path) in direct.stderr, direct.stderr
    assert "not yours" in direct.stderr
    for out in outs:
        assert "reset" not in out.stderr
        assert "hint:" in out.stderr
    assert agent.status().counters.rejected_peers == before  # it never even connected


def test_symlinked_start_lock_is_not_followed(desktop: Session, tmp_path: Path) -> None:
    folder = desktop.runtime_dir / "symlinked"
    folder.mkdir(mode=0o700)
    target = tmp_path / "chosen-by-attacker"
    (folder / "agent.sock.start").symlink_to(target)
    run = _cli(desktop.env, "--socket", str(folder / "agent.sock"), "start")
    assert run.returncode != 0, run
    assert "agent.sock.start" in run.stderr
    assert not target.exists()
    assert not (folder / "agent.sock").exists()  # and no agent was started


def test_loose_folder_of_our_own_is_not_adopted(desktop: Session) -> None:
    folder = desktop.runtime_dir / "loose"
    folder.mkdir()
    folder.chmod(0o757)  # someone else could have put a lock file or a socket in it
    (folder / "agent.sock.lock").write_bytes(b"")
    path = str(folder / "agent.sock")
    serve = subprocess.run(
        [sys.executable, "-m", "nomyo_agent", "serve", "--socket", path],
        env=desktop.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert serve.returncode != 0
    assert str(folder) in serve.stderr
    assert "0757" in serve.stderr
    assert folder.stat().st_mode & 0o777 == 0o757  # not chmod-ed into service
    assert not os.path.exists(path)
    with pytest.raises(UnsafeSocketError, match="0757"):
        AgentConnection.open(path, timeout=5)


def _second_agent(env: dict[str, str], path: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nomyo_agent", "serve", "--socket", path],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the second agent took the socket over and served:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_live_agent_whose_lock_was_deleted_is_not_taken_over(agent: RunningAgent) -> None:
    os.unlink(agent.path + ".lock")
    second = _second_agent(agent.env, agent.path)
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert agent.status().pid == agent.pid
    assert agent.proc.poll() is None


def test_socket_activated_agent_is_not_taken_over(
    activated: Activated,  # noqa: F811 - the fixture
    desktop: Session,
) -> None:
    with AgentConnection.open(activated.path, timeout=30) as conn:
        first = conn.call(p.Status(), p.StatusReply).pid
    assert not os.path.exists(activated.path + ".lock")
    second = _second_agent(desktop.env, activated.path)
    assert second.returncode != 0
    assert "already running" in second.stderr
    with AgentConnection.open(activated.path, timeout=30) as conn:
        assert conn.call(p.Status(), p.StatusReply).pid == first


def test_unsafe_socket_error_is_an_agent_error() -> None:
    assert issubclass(UnsafeSocketError, AgentError)
