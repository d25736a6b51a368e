"""Socket activation on its own: ``systemd-socket-activate`` in front of ``nomyo-agent serve``.

No service manager: ``systemd-socket-activate`` binds the socket, waits for the first connection
and execs the agent with ``LISTEN_FDS``/``LISTEN_FDNAMES``; the test plays systemd's notify socket
itself, so it sees exactly what the agent reports and when.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from nomyo_agent import _systemd
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from support.agent import RunningAgent
from support.desktop import Session, require_programs, stop_group
from support.devserver import RunningDevServer
from support.proxy import PROXY, proxy_cli, proxy_env

PASSED_VARS = (
    "PATH", "HOME", "DBUS_SESSION_BUS_ADDRESS", "PYTHON_KEYRING_BACKEND", "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "LANG",
)  # fmt: skip


@dataclass
class Activated:
    path: str
    proc: subprocess.Popen[bytes]
    notify: socket.socket
    log: Path

    def messages(self, timeout: float = 20.0) -> list[str]:
        """The next datagram sent to our NOTIFY_SOCKET, split into its assignments."""
        self.notify.settimeout(timeout)
        try:
            return self.notify.recv(4096).decode().split("\n")
        except TimeoutError:
            pytest.fail(f"no sd_notify message in {timeout} s; agent log:\n{self.log.read_text()}")


@pytest.fixture
def activated(desktop: Session) -> Iterator[Activated]:
    require_programs("systemd-socket-activate")
    folder = Path(tempfile.mkdtemp(prefix="sa-"))  # short: sun_path has 108 bytes
    path = str(folder / "agent.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(folder / "notify"))
    env = dict(desktop.env, NOTIFY_SOCKET=str(folder / "notify"))
    setenv = [f"--setenv={k}" for k in (*PASSED_VARS, "NOTIFY_SOCKET") if k in env]
    log = desktop.home / "activated.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", path, "--fdname=agent", *setenv,
             sys.executable, "-m", "nomyo_agent", "serve"],
            env=env, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while not os.path.exists(path):  # bound by systemd-socket-activate, not by the agent
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"systemd-socket-activate did not listen:\n{log.read_text()}")
        time.sleep(0.01)
    try:
        yield Activated(path, proc, notify, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()


def test_activation_ready_and_clean_stop(activated: Activated) -> None:
    # Nothing runs until the first connection; then the agent takes the listening socket.
    with AgentConnection.open(activated.path, timeout=30) as conn:
        status = conn.call(p.Status(), p.StatusReply)
        ready = activated.messages()
        assert "READY=1" in ready
        assert f"MAINPID={status.pid}" in ready
        # Ready means serving: the same connection goes on answering.
        assert conn.call(p.Status(), p.StatusReply).pid == status.pid
    assert status.pid == activated.proc.pid  # systemd-socket-activate exec'd the agent
    assert status.socket == activated.path
    env = Path(f"/proc/{status.pid}/environ").read_bytes().split(b"\0")
    assert b"LISTEN_FDNAMES=agent" in env

    activated.proc.terminate()  # SIGTERM, as systemd stops a service
    assert "STOPPING=1" in activated.messages()
    assert activated.proc.wait(timeout=20) == 0, activated.log.read_text()
    # The socket belongs to whoever bound it (systemd, here its stand-in): the agent leaves it.
    assert os.path.exists(activated.path)


def test_many_clients_share_the_activated_socket(activated: Activated) -> None:
    conns = [AgentConnection.open(activated.path, timeout=30) for _ in range(5)]
    try:
        pids = {c.call(p.Status(), p.StatusReply).pid for c in conns}
    finally:
        for c in conns:
            c.close()
    assert pids == {activated.proc.pid}  # one agent, not one per connection


# --- the activation protocol itself, without a manager -----------------------------------------


def test_inherited_socket_ignores_another_processes_variables() -> None:
    assert (
        _systemd.inherited_socket({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}) is None
    )
    assert _systemd.inherited_socket({}) is None
    assert _systemd.inherited_socket({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) is None


def test_inherited_socket_picks_the_fd_named_agent(tmp_path: Path) -> None:
    # Two sockets, the agent's second: it must take fd 4, close fd 3, and hide LISTEN_* from
    # its own children.
    require_programs("systemd-socket-activate")
    other, mine = str(tmp_path / "other.sock"), str(tmp_path / "agent.sock")
    script = (
        "import os; from nomyo_agent import _systemd\n"
        "s = _systemd.inherited_socket()\n"
        "try:\n    os.fstat(3); closed = False\nexcept OSError:\n    closed = True\n"
        "print(s.fileno(), s.getsockname(), closed, 'LISTEN_FDS' in os.environ, flush=True)\n"
    )
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", other, "-l", mine, "--fdname=other:agent",
         "--setenv=PATH", sys.executable, "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(mine):
            assert time.monotonic() < deadline, proc.stderr
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(mine)
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.split() == ["4", mine, "True", "False"], err


# --- nomyo-proxy behind the same activation (its units name the socket "proxy") ----------------


def test_proxy_takes_the_socket_named_proxy_on_first_connection(
    agent: RunningAgent, devserver: RunningDevServer, tmp_path: Path
) -> None:
    require_programs("systemd-socket-activate")
    agent.keygen(bits=2048)
    env = proxy_env(agent)
    token = proxy_cli(env, "token", "create", "activated").stdout.strip()
    with socket.socket() as probe:  # a free port for systemd-socket-activate to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    setenv = [f"--setenv={k}" for k in (*PASSED_VARS, "NOMYO_AGENT_SOCK") if k in env]
    log = tmp_path / "proxy.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=proxy",
             *setenv, PROXY, "serve", "--router", devserver.url, "--allow-http"],
            env=env, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:  # bound by systemd-socket-activate; the proxy starts on the first connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"systemd-socket-activate did not listen:\n{log.read_text()}")
                time.sleep(0.02)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "devserver/echo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert answer.status_code == 200, log.read_text()
        assert f"NOMYO_PROXY_URL=http://127.0.0.1:{port}/v1" in log.read_text()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"LISTEN_FDNAMES=proxy" in environ  # exec'd in place, no fork
    finally:
        stop_group(proc)
