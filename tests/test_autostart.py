"""Agent auto-start, as gpg starts gpg-agent: two clients that find no agent at the same moment
start exactly one; ``NOMYO_AGENT_AUTOSTART=0`` starts none; a stale auto-started agent of another
protocol version is stopped and replaced. Clients run as separate processes in a private desktop
session, so the agents they start use its keyring and folders, never the developer's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_devserver import DevServer
from support.client_fakes import OtherVersionAgent, key_file_pem
from support.desktop import Session
from support.keys import rsa_key
from support.waiting import wait_until

# A client: one request (the new agent has no identity, so NoIdentityError proves it got there),
# then the agent's hello as the client saw it.
CLIENT = r"""
import asyncio, json, sys
import nomyo_client

async def main():
    client = nomyo_client.SecureChatCompletion(sys.argv[1], allow_http=True)
    try:
        await client.create(model="devserver/echo", messages=[{"role": "user", "content": "hi"}])
        outcome = "answered"
    except nomyo_client.APIError as exc:
        outcome = type(exc).__name__
    hello = client._engine._state.agent.hello
    print(json.dumps({"outcome": outcome, "pid": hello and hello.pid,
                      "protocol": hello and hello.protocol,
                      "autostarted": hello and hello.autostarted}), flush=True)
    await client.aclose()

asyncio.run(main())
"""


@pytest.fixture
def session_env(desktop: Session) -> Iterator[dict[str, str]]:
    """The desktop's environment with a socket nobody listens on yet; kills what got started."""
    path = str(desktop.runtime_dir / "nomyo-agent" / "auto.sock")
    env = {**desktop.env, "NOMYO_AGENT_SOCK": path, "PYTHONWARNINGS": "error"}
    env.pop("NOMYO_AGENT_AUTOSTART", None)
    yield env
    with contextlib.suppress(Exception), AgentConnection.open(path, timeout=5) as conn:
        pid = conn.call(p.Hello(), p.HelloReply).pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def run_clients(
    env: dict[str, str],
    url: str,
    count: int,
    *,
    cwd: Path | None = None,
    script: Path | None = None,
) -> list[dict[str, object]]:
    """``count`` clients at once; ``script`` runs the client from a file (an app's usual way)."""
    argv = [sys.executable, str(script)] if script else [sys.executable, "-c", CLIENT]
    procs = [
        subprocess.Popen([*argv, url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=cwd)
        for _ in range(count)
    ]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_clients_start_one_agent(session_env: dict[str, str], router: DevServer) -> None:
    assert not Path(session_env["NOMYO_AGENT_SOCK"]).exists()
    first, second = run_clients(session_env, router.url, 2)
    assert first["outcome"] == second["outcome"] == "NoIdentityError"
    assert first["pid"] == second["pid"]
    assert first["autostarted"] is True
    assert first["protocol"] == p.PROTOCOL_VERSION
    assert isinstance(first["pid"], int)
    assert _alive(first["pid"])
    # A third client later reuses it rather than starting another.
    (third,) = run_clients(session_env, router.url, 1)
    assert third["pid"] == first["pid"]


def test_autostart_off_starts_nothing(session_env: dict[str, str], router: DevServer) -> None:
    env = {**session_env, "NOMYO_AGENT_AUTOSTART": "0"}
    (result,) = run_clients(env, router.url, 1)
    assert result["outcome"] == "AgentUnavailableError"
    assert not Path(env["NOMYO_AGENT_SOCK"]).exists()


def test_stale_autostarted_agent_is_replaced(
    other_version_agent: OtherVersionAgent, desktop: Session, router: DevServer
) -> None:
    stale = other_version_agent  # an agent a client started, left over from another version
    stale.autostarted = True
    env = {**desktop.env, "NOMYO_AGENT_SOCK": stale.path, "PYTHONWARNINGS": "error"}
    try:
        (result,) = run_clients(env, router.url, 1)
        assert "Stop" in stale.ops
        assert result["protocol"] == p.PROTOCOL_VERSION
        assert result["outcome"] == "NoIdentityError"  # a real, fresh agent answered
        assert result["pid"] != 1  # the stale one says pid 1
    finally:
        with contextlib.suppress(Exception), AgentConnection.open(stale.path) as conn:
            os.kill(conn.call(p.Hello(), p.HelloReply).pid, signal.SIGTERM)
        wait_until("the new agent to go", lambda: not Path(stale.path).exists())


def test_blocking_identity_calls_replace_a_stale_autostarted_agent_too(
    other_version_agent: OtherVersionAgent, desktop: Session, tmp_path: Path
) -> None:
    # SecureCompletionClient's blocking methods take the same path to the agent as requests.
    stale = other_version_agent
    stale.autostarted = True
    key = tmp_path / "private_key.pem"
    key.write_bytes(key_file_pem(6))
    code = (
        "import sys, nomyo_client; c = nomyo_client.SecureCompletionClient('http://127.0.0.1:9',"
        " allow_http=True); c.load_keys(sys.argv[1]); print(c.public_key_pem, end='')"
    )
    env = {**desktop.env, "NOMYO_AGENT_SOCK": stale.path, "PYTHONWARNINGS": "error"}
    try:
        out = subprocess.run([sys.executable, "-c", code, str(key)], env=env, text=True,
                             capture_output=True, timeout=60, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert stale.ops[-1] == "Stop"
        assert out.stdout == _keys.public_pem(rsa_key(2048, 6).public_key())
    finally:
        with contextlib.suppress(Exception), AgentConnection.open(stale.path) as conn:
            os.kill(conn.call(p.Hello(), p.HelloReply).pid, signal.SIGTERM)
        wait_until("the new agent to go", lambda: not Path(stale.path).exists())


def test_stale_agent_not_started_by_a_client_is_left_alone(
    other_version_agent: OtherVersionAgent, desktop: Session, router: DevServer
) -> None:
    env = {**desktop.env, "NOMYO_AGENT_SOCK": other_version_agent.path}
    (result,) = run_clients(env, router.url, 1)
    assert result["outcome"] == "AgentProtocolError"
    assert "Stop" not in other_version_agent.ops


# --- nothing from the caller's working directory runs -------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A shared working directory with a ``nomyo_agent`` package in it, and the file its code
    writes if it ever runs (``python -m nomyo_agent`` there would put it first on sys.path)."""
    cwd, marker = tmp_path / "shared", tmp_path / "planted-code-ran"
    (cwd / "nomyo_agent").mkdir(parents=True)
    code = f"open({str(marker)!r}, 'a').write(__name__ + chr(10))\n"
    for name in ("__init__.py", "__main__.py"):
        (cwd / "nomyo_agent" / name).write_text(code)
    return cwd, marker


def _agent_pid(path: str) -> int:
    with AgentConnection.open(path, timeout=10) as conn:
        return conn.call(p.Hello(), p.HelloReply).pid


def test_autostart_runs_no_code_from_the_working_directory(
    session_env: dict[str, str], router: DevServer, planted: tuple[Path, Path], tmp_path: Path
) -> None:
    cwd, marker = planted
    app = tmp_path / "app.py"
    app.write_text(CLIENT)
    (result,) = run_clients(session_env, router.url, 1, cwd=cwd, script=app)
    assert not marker.exists(), marker.read_text()
    assert result["outcome"] == "NoIdentityError"  # the real agent answered
    assert result["autostarted"] is True
    assert isinstance(result["pid"], int)
    assert os.readlink(f"/proc/{result['pid']}/cwd") == "/"


def test_cli_start_runs_no_code_from_the_working_directory(
    session_env: dict[str, str], planted: tuple[Path, Path]
) -> None:
    cwd, marker = planted
    script = Path(sys.executable).parent / "nomyo-agent"  # the installed entry point
    done = subprocess.run(
        [str(script), "start"], env=session_env, cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()
    pid = _agent_pid(session_env["NOMYO_AGENT_SOCK"])
    assert f"pid {pid}" in done.stdout
    assert os.readlink(f"/proc/{pid}/cwd") == "/"


def test_start_moves_the_log_an_earlier_version_left_in_the_state_folder(
    session_env: dict[str, str], tmp_path: Path
) -> None:
    """Earlier versions wrote $XDG_STATE_HOME/nomyo-agent/agent.log; the log folder is now
    platformdirs' (.../nomyo-agent/log/). The old log moves there, so nothing is left behind
    where nobody is told to look."""
    env = {**session_env, "XDG_STATE_HOME": str(tmp_path / "state")}
    old = tmp_path / "state" / "nomyo-agent" / "agent.log"
    old.parent.mkdir(parents=True)
    old.write_text("a line from before\n")
    script = Path(sys.executable).parent / "nomyo-agent"
    done = subprocess.run(
        [str(script), "start"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    new = tmp_path / "state" / "nomyo-agent" / "log" / "agent.log"
    assert new.read_text().startswith("a line from before\n")
    assert not old.exists()
