"""Process protection of a real agent: other users, debuggers, and status's claims vs /proc.

Recipes from TESTING.md ("Memory and process protection"): another uid is ``setpriv --reuid=65534
...`` running Debian's ``/usr/bin/python3`` (the project's pyenv Python lives in root's home,
which that user cannot read) with a stdlib-only client; ptrace is tested with both the agent and
gdb started without CAP_SYS_PTRACE, and a dumpable ``sleep`` as the control that gdb does attach.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import UnsafeSocketError
from support.agent import RunningAgent
from support.desktop import require_programs
from support.intruder import AS_NOBODY

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="setpriv, /proc, gdb")

NO_PTRACE = ("setpriv", "--bounding-set=-sys_ptrace")
NO_IPC_LOCK = ("--bounding-set=-ipc_lock", "--inh-caps=-all")
# Root's uid, nobody's group: /proc/PID/* then belongs to root:nogroup while the process is
# dumpable and to root:root once it is not, so the kernel's view of "dumpable" can be read
# from outside.
NOGROUP = ("setpriv", "--regid=65534", "--clear-groups")

# Runs as uid 65534 under /usr/bin/python3: stdlib only. Sends one Hello frame and reports what
# came back: "refused:<errno name>" (could not connect), "closed" (EOF, no reply), or "reply".
_CLIENT = r"""
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("refused:" + errno.errorcode.get(exc.errno, str(exc.errno))); sys.exit()
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    data = s.recv(65536)
    print("reply" if data else "closed")
except (ConnectionResetError, BrokenPipeError):  # closed before or while we sent
    print("closed")
except socket.timeout:
    print("timeout")
"""


def _as_nobody(path: str) -> str:
    frame = p.encode_frame(p.Hello(client="intruder")).hex()
    out = subprocess.run(
        [*AS_NOBODY, "/usr/bin/python3", "-I", "-c", _CLIENT, path, frame],
        capture_output=True, text=True, timeout=30, check=True, cwd="/",
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def world_reachable(agent: RunningAgent) -> Iterator[str]:
    """A hard link to the agent's socket in a folder anyone may enter, the socket inode opened
    to everyone (0666): with the file-system barrier gone, only the agent's peer-uid check is
    left between another user and the agent."""
    folder = Path(tempfile.mkdtemp(prefix="nomyo-sock-", dir="/tmp"))
    folder.chmod(0o755)
    link = folder / "agent.sock"
    os.link(agent.path, link)
    link.chmod(0o666)
    try:
        yield str(link)
    finally:
        link.chmod(0o600)
        link.unlink()
        folder.rmdir()


def test_socket_is_private_on_disk(agent: RunningAgent) -> None:
    require_programs("setpriv")
    st = os.stat(agent.path)
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(agent.path)).st_mode & 0o777 == 0o700
    assert _as_nobody(agent.path) == "refused:EACCES"


def test_other_uid_is_closed_without_reply(agent: RunningAgent, world_reachable: str) -> None:
    require_programs("setpriv", "/usr/bin/python3")
    before = agent.status().counters.rejected_peers
    assert _as_nobody(world_reachable) == "closed"
    after = agent.status()
    assert after.counters.rejected_peers == before + 1
    # The agent keeps serving its own user; whose client, for its part, will not use a socket
    # in a folder that others may enter (test_socket_trust.py has that side).
    with AgentConnection.open(agent.path, timeout=10) as conn:
        assert conn.call(p.Status(), p.StatusReply).pid == agent.pid
    with pytest.raises(UnsafeSocketError, match="mode 0755"):
        AgentConnection.open(world_reachable, timeout=10)


def _gdb(pid: int) -> str:
    out = subprocess.run(
        [*NO_PTRACE, "gdb", "-q", "-batch", "-nx", "-p", str(pid), "-ex", "info proc"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return out.stdout + out.stderr


def test_debugger_cannot_attach(make_agent: Callable[..., RunningAgent]) -> None:
    require_programs("setpriv", "gdb", "sleep")
    control = subprocess.Popen([*NO_PTRACE, "sleep", "60"])
    try:
        # The control: the same gdb, the same missing capability, a dumpable target: attached.
        seen = _gdb(control.pid)
        assert f"process {control.pid}" in seen, seen
        assert "Operation not permitted" not in seen
    finally:
        control.kill()
        control.wait()
    agent = make_agent(prefix=NO_PTRACE)
    seen = _gdb(agent.pid)
    assert "ptrace: Operation not permitted" in seen, seen
    assert f"process {agent.pid}" not in seen
    hardening = agent.status().hardening
    assert hardening.ptrace_denied
    assert hardening.not_dumpable
    assert agent.proc.poll() is None  # still alive and serving
    assert agent.status().state is p.State.NO_IDENTITY


def _proc_gid(pid: int) -> int:
    """The group that owns /proc/PID/mem: the process's own while dumpable, else root's."""
    deadline = time.monotonic() + 5
    # Wait for the exec after setpriv's setresgid: between the two, the kernel has marked the
    # process non-dumpable (a credential change), which the exec of a plain binary undoes.
    while (
        Path(f"/proc/{pid}/status").read_text().count("\nGid:\t65534") == 0
        or Path(f"/proc/{pid}/comm").read_text().strip() == "setpriv"
    ):
        assert time.monotonic() < deadline, "setpriv did not switch the group and exec"
        time.sleep(0.01)
    return os.stat(f"/proc/{pid}/mem").st_gid


def _proc_facts(pid: int) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text()
    limits = Path(f"/proc/{pid}/limits").read_text()

    def kib(field: str) -> int:
        m = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        assert m, field
        return int(m.group(1))

    core = next(x for x in limits.splitlines() if x.startswith("Max core file size")).split()
    return {"VmLck": kib("VmLck"), "VmSize": kib("VmSize"), "core": core[4:6]}


@pytest.mark.parametrize("caps", [(), NO_IPC_LOCK], ids=["root", "no-ipc-lock"])
def test_status_claims_match_proc(
    make_agent: Callable[..., RunningAgent], caps: tuple[str, ...]
) -> None:
    require_programs("setpriv", "sleep")
    control = subprocess.Popen([*NOGROUP, *caps, "sleep", "60"])
    try:
        # The control: a dumpable process with the same credentials shows nobody's group.
        assert _proc_gid(control.pid) == 65534
    finally:
        control.kill()
        control.wait()
    agent = make_agent(prefix=(*NOGROUP, *caps))
    agent.keygen(bits=2048)  # unlocked: the key object now lives in the agent's heap
    claims = json.loads(agent.cli("status", "--json").stdout)["hardening"]
    facts = _proc_facts(agent.pid)
    assert claims["core_dumps_disabled"] is (facts["core"] == ["0", "0"])
    assert claims["core_dumps_disabled"]
    locked = facts["VmLck"] >= 0.9 * facts["VmSize"]
    assert claims["process_memory_locked"] is locked
    assert claims["key_memory_locked"] is locked  # the OpenSSL heap is locked only with the rest
    assert claims["not_dumpable"] is (_proc_gid(agent.pid) == 0)  # kernel's view, from outside
    assert claims["not_dumpable"]
    if caps:
        assert not locked
        assert facts["VmLck"] < 1024
        assert any("RLIMIT_MEMLOCK" in d for d in claims["details"])
        assert any("OpenSSL's heap" in d for d in claims["details"])
        assert "RLIMIT_MEMLOCK" in agent.log_text()  # harden_process warned at start
    else:
        assert locked, facts  # root holds CAP_IPC_LOCK here (TESTING.md)
        assert claims["details"] == []
