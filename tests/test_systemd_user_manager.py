"""A real ``systemd --user`` manager runs the installed units (TESTING.md, "systemd").

The manager runs in a private mount namespace (a tmpfs over /run, where it must find
/run/systemd/system) but with the ``desktop`` session's environment: its runtime folder is the
session's own, so the socket, the manager's private socket and ``systemctl --user`` are reachable
from the test without entering the namespace, and the service gets the session bus and keyring.
There is no journal here: a drop-in sends the agent's output to a file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import AgentConnectionError, AgentUnavailableError
from support.desktop import Session, require_programs
from support.intruder import AS_NOBODY, NOBODY, python_for_nobody
from support.x11 import XDisplay

SYSTEMD = "/lib/systemd/systemd"
AGENT = [sys.executable, "-m", "nomyo_agent"]

pytestmark = pytest.mark.slow


@dataclass
class UserManager:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    prefix: tuple[str, ...] = ()  # how to run a command as the manager's user
    python: str = sys.executable

    @property
    def units(self) -> Path:
        return Path(self.env["XDG_CONFIG_HOME"]) / "systemd" / "user"

    @property
    def socket(self) -> str:
        return str(Path(self.env["XDG_RUNTIME_DIR"]) / "nomyo-agent" / "agent.sock")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, "systemctl", "--user", *args],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            pytest.fail(f"systemctl --user {' '.join(args)}: {result.stderr}\n{self.logs()}")
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={x}" for x in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def agent(self, *args: str, input: bytes = b"") -> subprocess.CompletedProcess[str]:
        """``nomyo-agent ARGS`` as the user would run it in this session."""
        result = subprocess.run(
            [*self.prefix, self.python, "-m", "nomyo_agent", *args],
            env=self.env, input=input, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    def drop_in(self, name: str, text: str) -> None:
        folder = self.units / "nomyo-agent.service.d"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.conf").write_text(text)

    def logs(self) -> str:
        agent_log = Path(self.env["HOME"]) / "agent-service.log"
        parts = [f"manager log:\n{self.log.read_text(errors='replace')[-3000:]}"]
        if agent_log.exists():
            parts.append(f"agent log:\n{agent_log.read_text(errors='replace')[-3000:]}")
        status = subprocess.run(
            [*self.prefix, "systemctl", "--user", "status", "--no-pager", "nomyo-agent.service"],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        parts.append(status.stdout[-2000:])
        return "\n".join(parts)

    def wait_running(self, timeout: float = 20.0) -> None:
        """Until the manager runs. Not `is-system-running`: it stats /proc/1/root, which fails
        here, and answers "offline". The private socket first, so that systemctl does not fall
        back to asking the session bus to activate systemd."""
        private = Path(self.env["XDG_RUNTIME_DIR"]) / "systemd" / "private"
        deadline = time.monotonic() + timeout
        while not private.exists() or self.systemctl(
            "show", "--property=SystemState", "--value", check=False
        ).stdout.strip() not in {"running", "degraded"}:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the user manager did not start\n{self.logs()}")
            time.sleep(0.05)

    def wait_for(self, unit: str, state: str, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            props = self.show(unit, "ActiveState", "SubState", "Result", "MainPID")
            if props["ActiveState"] == state:
                return props
            if time.monotonic() > deadline:
                pytest.fail(f"{unit} stayed {props} instead of {state}\n{self.logs()}")
            time.sleep(0.05)


@pytest.fixture
def user_manager(desktop: Session) -> Iterator[UserManager]:
    require_programs("unshare", "systemctl")
    if not Path(SYSTEMD).exists():
        pytest.fail(f"{SYSTEMD} is missing: install the systemd package", pytrace=False)
    env = dict(desktop.env)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    log = desktop.home / "manager.log"
    # Debian's dbus-user-session would start a second session bus at %t/bus and point every
    # service at it; the session's bus (with the unlocked keyring) is the desktop fixture's.
    units = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    units.mkdir(parents=True, exist_ok=True)
    for unit in ("dbus.socket", "dbus.service"):
        (units / unit).symlink_to(os.devnull)
    script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec " + SYSTEMD
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{script} --user"],
            env=env, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    manager = UserManager(proc, env, log)
    try:
        manager.wait_running()
        yield manager
    finally:
        manager.systemctl("exit", check=False)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def install(manager: UserManager, *extra: str) -> str:
    result = manager.agent("install-service", *extra)
    assert result.returncode == 0, result.stderr
    # The agent's stderr goes to a file: there is no journal in this namespace.
    out = Path(manager.env["HOME"]) / "agent-service.log"
    manager.drop_in("test-log", f"[Service]\nStandardOutput=append:{out}\nStandardError=inherit\n")
    manager.systemctl("daemon-reload")
    return result.stdout


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def test_first_connection_starts_the_sandboxed_agent(user_manager: UserManager) -> None:
    out = install(user_manager)
    assert "ran systemctl --user enable --now nomyo-agent.socket" in out
    assert "to undo: " in out
    assert out.rstrip().endswith("uninstall-service")
    sock = Path(user_manager.socket)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert user_manager.show("nomyo-agent.socket", "ActiveState")["ActiveState"] == "active"
    assert user_manager.show("nomyo-agent.service", "ActiveState")["ActiveState"] == "inactive"

    # The first connection starts the agent; nothing else does.
    with AgentConnection.open(user_manager.socket, timeout=30) as conn:
        status = conn.call(p.Status(), p.StatusReply)
    props = user_manager.wait_for("nomyo-agent.service", "active")
    assert int(props["MainPID"]) == status.pid
    assert status.socket == user_manager.socket

    # The sandbox is in force on the running agent.
    st = proc_status(status.pid)
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert int(st["CapBnd"], 16) == 0
    assert os.readlink(f"/proc/{status.pid}/ns/user") != os.readlink("/proc/self/ns/user")
    # The agent's own hardening works inside the sandbox (syscall filter included). Locking
    # the whole process needs a memlock limit the manager here does not give (8 MiB, clamped
    # from LimitMEMLOCK=infinity), and the agent says so rather than pretending.
    hardening = status.hardening
    assert hardening.not_dumpable, hardening.details
    assert hardening.core_dumps_disabled, hardening.details
    assert hardening.key_memory_dontdump, hardening.details
    assert hardening.process_memory_locked or any("RLIMIT_MEMLOCK" in d for d in hardening.details)
    limits = Path(f"/proc/{status.pid}/limits").read_text()
    assert any(
        line.startswith("Max core file size") and " 0 " in line for line in limits.splitlines()
    )

    # An identity in the session's keyring (no passphrase), then a seal/open round trip.
    keygen = user_manager.agent("keygen", "--bits", "2048", "--passphrase-stdin", input=b"\n")
    assert keygen.returncode == 0, keygen.stderr + user_manager.logs()
    with AgentConnection.open(user_manager.socket, timeout=60) as conn:
        ident = conn.call(p.PublicKey(), p.IdentityReply)
        sealed = conn.call(
            p.Seal(origin="https://self.test", router_key_pem=ident.public_key_pem,
                   plaintext=b'{"q":"sandboxed"}'),
            p.SealReply,
        )  # fmt: skip
        opened = conn.call(p.Open(package=sealed.package), p.OpenReply)
    assert opened.plaintext == b'{"q":"sandboxed"}'
    pins = Path(user_manager.env["XDG_STATE_HOME"]) / "nomyo-agent" / "pins.json"
    assert pins.exists(), "the state folder was not writable from the sandbox"
    assert _keys.fingerprint(_keys.load_router_key(ident.public_key_pem)) == ident.fingerprint

    # Restart=on-failure: a crashed agent comes back on the next connection.
    os.kill(status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(AgentUnavailableError, AgentConnectionError):
            with AgentConnection.open(user_manager.socket, timeout=30) as conn:
                if conn.call(p.Status(), p.StatusReply).pid != status.pid:
                    break
        if time.monotonic() > deadline:
            pytest.fail(f"the agent did not come back\n{user_manager.logs()}")
        time.sleep(0.1)

    # Stopping is clean: exit 0 after STOPPING=1, and the socket file is gone with the unit.
    user_manager.systemctl("stop", "nomyo-agent.socket", "nomyo-agent.service")
    props = user_manager.show(
        "nomyo-agent.service", "ActiveState", "Result", "ExecMainStatus", "ExecMainCode"
    )
    assert props["ActiveState"] == "inactive"
    assert props["Result"] == "success", user_manager.logs()
    assert props["ExecMainStatus"] == "0"
    assert not sock.exists()


def test_active_only_once_the_agent_says_ready(user_manager: UserManager, tmp_path: Path) -> None:
    install(user_manager)
    # Hold the real agent back before it starts (same PID through exec, so NotifyAccess=main
    # still applies): systemd must keep the unit "activating" until the agent's READY=1.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    exec_start = user_manager.show("nomyo-agent.service", "ExecStart")["ExecStart"]
    argv = exec_start.split("argv[]=", 1)[1].split(" ;", 1)[0]
    user_manager.drop_in(
        "gate",
        f"[Service]\nExecStart=\nExecStart=/bin/sh -c 'read _ < {gate}; exec \"$@\"' sh {argv}\n",
    )
    user_manager.systemctl("daemon-reload")

    replies: list[p.StatusReply] = []

    def client() -> None:
        with AgentConnection.open(user_manager.socket, timeout=60) as conn:
            replies.append(conn.call(p.Status(), p.StatusReply))

    thread = threading.Thread(target=client)
    thread.start()
    props = user_manager.wait_for("nomyo-agent.service", "activating")
    time.sleep(0.5)
    props = user_manager.show("nomyo-agent.service", "ActiveState", "MainPID")
    assert props["ActiveState"] == "activating"
    assert not replies  # the client waits in the socket's backlog, not refused
    with open(gate, "w") as g:
        g.write("go\n")
    thread.join(timeout=30)
    assert replies, user_manager.logs()
    props = user_manager.wait_for("nomyo-agent.service", "active")
    assert int(props["MainPID"]) == replies[0].pid
    user_manager.systemctl("stop", "nomyo-agent.socket")


def test_uninstall_stops_and_removes_everything(user_manager: UserManager) -> None:
    install(user_manager)
    with AgentConnection.open(user_manager.socket, timeout=30) as conn:
        first = conn.call(p.Status(), p.StatusReply).pid
    # `nomyo-agent stop` ends the agent cleanly; the socket stays and starts the next one.
    assert user_manager.agent("stop").returncode == 0
    props = user_manager.wait_for("nomyo-agent.service", "inactive")
    assert props["Result"] == "success"
    with AgentConnection.open(user_manager.socket, timeout=30) as conn:
        assert conn.call(p.Status(), p.StatusReply).pid != first
    result = user_manager.agent("uninstall-service")
    assert result.returncode == 0, result.stderr
    assert "removed" in result.stdout
    assert not (user_manager.units / "nomyo-agent.socket").exists()
    assert not (user_manager.units / "nomyo-agent.service").exists()
    assert not Path(user_manager.socket).exists()
    for unit in ("nomyo-agent.socket", "nomyo-agent.service"):
        assert user_manager.show(unit, "ActiveState")["ActiveState"] == "inactive"


# --- pinentry, run by the sandboxed agent on the asker's terminal or display ---------------------


def _protected_identity(manager: UserManager, pinentry: str) -> None:
    install(manager)
    manager.drop_in("pinentry", f"[Service]\nEnvironment=NOMYO_AGENT_PINENTRY={pinentry}\n")
    manager.systemctl("daemon-reload")
    keygen = manager.agent("keygen", "--bits", "2048", "--passphrase-stdin", input=b"pw-sandbox\n")
    assert keygen.returncode == 0, keygen.stderr + manager.logs()
    assert manager.agent("lock").returncode == 0


def _unlock_in_background(
    env: dict[str, str],
) -> concurrent.futures.Future[subprocess.CompletedProcess[bytes]]:
    """``nomyo-agent unlock`` without a terminal of its own: the agent's pinentry must ask."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    cmd = [*AGENT, "unlock"]
    future = pool.submit(
        subprocess.run, cmd, env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )
    pool.shutdown(wait=False)
    return future


def _assert_unlocked(
    manager: UserManager, future: concurrent.futures.Future[subprocess.CompletedProcess[bytes]]
) -> None:
    result = future.result(timeout=60)
    assert result.returncode == 0, result.stderr.decode() + manager.logs()
    with AgentConnection.open(manager.socket) as conn:
        assert conn.call(p.Status(), p.StatusReply).state == p.State.UNLOCKED
    manager.systemctl("stop", "nomyo-agent.socket")


def _wait(
    manager: UserManager, what: str, check: Callable[[], bool], timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{manager.logs()}")
        time.sleep(0.05)


def test_pinentry_on_a_terminal_from_the_sandbox(user_manager: UserManager) -> None:
    # PrivateDevices= keeps /dev/pts; ProtectSystem= and the syscall filter must not stop a
    # terminal pinentry from opening the asker's tty.
    require_programs("tmux", "pinentry-tty")
    _protected_identity(user_manager, "/usr/bin/pinentry-tty")
    folder = tempfile.mkdtemp(prefix="pe-")  # a short socket path for tmux
    sock = os.path.join(folder, "tmux")

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", sock, *args], capture_output=True, text=True, check=True, timeout=10,
            env={**os.environ, "TERM": "xterm-256color", "LANG": "C.UTF-8"},
        ).stdout  # fmt: skip

    tmux("new-session", "-d", "-s", "pe", "-x", "100", "-y", "30", "sleep 600")
    try:
        tty = tmux("display", "-p", "-t", "pe", "#{pane_tty}").strip()
        future = _unlock_in_background({**user_manager.env, "GPG_TTY": tty})
        _wait(
            user_manager,
            "the passphrase prompt",
            lambda: "Passphrase:" in tmux("capture-pane", "-p"),
        )
        tmux("send-keys", "-t", "pe", "-l", "pw-sandbox")
        tmux("send-keys", "-t", "pe", "Enter")
        _assert_unlocked(user_manager, future)
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], check=False, timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def own_display(tmp_path: Path) -> Iterator[XDisplay]:
    """An Xvfb on a display number far above those ``-displayfd`` hands out from 0 upwards.

    Seen here: a server probing a number that is taken unlinks that display's path socket in
    /tmp/.X11-unix on its way to the next number, so concurrent test runs broke each other.
    """
    require_programs("Xvfb", "xdotool", "xdpyinfo")
    for number in random.sample(range(150, 900), 8):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            continue
        proc = subprocess.Popen(
            ["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp", "-noreset"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                probe = subprocess.run(
                    ["xdpyinfo", "-display", f":{number}"],
                    capture_output=True, timeout=10, check=False,
                )  # fmt: skip
                if probe.returncode == 0:
                    yield XDisplay(name=f":{number}", artifacts=tmp_path, _procs=[proc])
                    return
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    pytest.fail("no Xvfb display could be started")


def test_graphical_pinentry_from_the_sandbox(
    user_manager: UserManager, own_display: XDisplay
) -> None:
    xdisplay = own_display
    # The X socket lives in /tmp/.X11-unix (and the abstract namespace): PrivateTmp= or
    # PrivateNetwork= would hide it. MemoryDenyWriteExecute= applies to GTK in the child too.
    require_programs("pinentry-gtk-2", "xdotool")
    _protected_identity(user_manager, "/usr/bin/pinentry-gtk-2")
    env = {**user_manager.env, **xdisplay.env, "NO_AT_BRIDGE": "1", "LANG": "C.UTF-8"}
    future = _unlock_in_background(env)

    def shown() -> bool:
        if future.done():
            result = future.result()
            pytest.fail(f"unlock ended first: {result.stderr.decode()}\n{user_manager.logs()}")
        return bool(xdisplay.windows_named("nomyo"))

    _wait(user_manager, "the pinentry window", shown)
    xdisplay.xdotool("type", "--delay", "20", "pw-sandbox")
    xdisplay.xdotool("key", "Return")
    _assert_unlocked(user_manager, future)


# --- an ordinary user's manager: the sandbox without root's privileges ---------------------------

# What PID 1 has made on any systemd machine before a user logs in; namespaced user services
# mount onto /run/systemd/unit-root and mask paths with /run/systemd/inaccessible/*.
PID1_RUN = (
    "mkdir -p /run/systemd/system /run/systemd/unit-root /run/systemd/inaccessible/dir"
    " && mknod -m 0 /run/systemd/inaccessible/chr c 0 0"
    " && mknod -m 0 /run/systemd/inaccessible/blk b 0 0"
    " && mkfifo -m 0 /run/systemd/inaccessible/fifo"
    " && touch /run/systemd/inaccessible/reg && chmod 0 /run/systemd/inaccessible/*"
)


def _cgroup_roots() -> list[Path]:
    hybrid = [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd")]
    return [p for p in hybrid if (p / "cgroup.procs").exists()] or [Path("/sys/fs/cgroup")]


def _remove_cgroup(path: Path) -> None:
    if path.is_dir():
        for child in [c for c in path.iterdir() if c.is_dir()]:
            _remove_cgroup(child)
        with contextlib.suppress(OSError):
            path.rmdir()


@pytest.fixture
def unprivileged_manager() -> Iterator[UserManager]:
    """``systemd --user`` of user 65534 with its own session bus and unlocked gnome-keyring.

    As user@.service does, the test delegates a cgroup to the user; the manager then runs with
    no capabilities at all, as every real user's manager does.
    """
    require_programs("unshare", "systemctl", "setpriv", "dbus-daemon", "gnome-keyring-daemon")
    top = Path(tempfile.mkdtemp(prefix="nomyo-user-"))  # /tmp/pytest-of-root is 0700
    home = top / "home"
    env = {
        "HOME": str(home), "XDG_RUNTIME_DIR": str(top / "run"), "PATH": "/usr/bin:/bin",
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_STATE_HOME": str(home / ".local/state"),
        "LANG": "C.UTF-8", "PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring",
    }  # fmt: skip
    for folder in (home / ".config/systemd/user", home / ".local/state", top / "run"):
        folder.mkdir(parents=True, mode=0o700)
    for unit in ("dbus.socket", "dbus.service"):  # the session bus is ours, as in user_manager
        (home / ".config/systemd/user" / unit).symlink_to(os.devnull)
    for path in [top, *top.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    python, extra = python_for_nobody(env)
    env.update(extra)
    procs: list[subprocess.Popen[bytes]] = []
    cgroups = [root / f"nomyo-test-{os.getpid()}" for root in _cgroup_roots()]
    try:
        bus = subprocess.Popen(
            [*AS_NOBODY, "dbus-daemon", "--session", "--nofork", "--nopidfile",
             "--print-address=1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(bus)
        assert bus.stdout is not None
        env["DBUS_SESSION_BUS_ADDRESS"] = bus.stdout.readline().decode().strip()
        bus.stdout.close()
        keyring = subprocess.Popen(
            [*AS_NOBODY, "gnome-keyring-daemon", "--foreground", "--unlock",
             "--components=secrets"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(b"test-login-password")
        keyring.stdin.close()
        for cgroup in cgroups:
            cgroup.mkdir()
            for path in [cgroup, *cgroup.iterdir()]:
                os.chown(path, NOBODY, NOBODY)
        join = "; ".join(f"echo $$ > {c}/cgroup.procs" for c in cgroups)
        script = f"{join}; mount -t tmpfs tmpfs /run && {PID1_RUN} && exec {' '.join(AS_NOBODY)}"
        log = top / "manager.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f"{script} {SYSTEMD} --user"],
                env=env, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        manager = UserManager(proc, env, log, prefix=AS_NOBODY, python=python)
        manager.wait_running()
        yield manager
        manager.systemctl("exit", check=False)
        proc.wait(timeout=15)
    finally:
        for started in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, signal.SIGKILL)
            started.wait(timeout=10)
        for cgroup in cgroups:
            _remove_cgroup(cgroup)
        shutil.rmtree(top, ignore_errors=True)


SEAL_OPEN = """
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
with AgentConnection.open(timeout=60) as conn:
    ident = conn.call(p.PublicKey(), p.IdentityReply)
    sealed = conn.call(p.Seal(origin="https://self.test", router_key_pem=ident.public_key_pem,
                              plaintext=b"as nobody"), p.SealReply)
    print(conn.call(p.Open(package=sealed.package), p.OpenReply).plaintext.decode())
"""


# docs/running.md gives this drop-in for systems that forbid unprivileged user namespaces.
NO_USERNS_DROP_IN = (
    "[Service]\nPrivateUsers=no\nPrivateDevices=no\nProtectKernelModules=no\nProtectClock=no\n"
    "CapabilityBoundingSet=~\n"
)


@pytest.mark.parametrize("userns", [True, False], ids=["userns", "no-userns-drop-in"])
def test_sandbox_works_for_an_ordinary_user(
    unprivileged_manager: UserManager, userns: bool
) -> None:
    manager = unprivileged_manager
    install(manager)
    if not userns:
        manager.drop_in("no-userns", NO_USERNS_DROP_IN)
    # Only a test artefact: the interpreter that runs the venv's packages for user 65534.
    if "PYTHONPATH" in manager.env:
        manager.drop_in(
            "pythonpath", f"[Service]\nEnvironment=PYTHONPATH={manager.env['PYTHONPATH']}\n"
        )
    manager.systemctl("daemon-reload")
    status = manager.agent("status", "--json")  # the first connection starts the agent
    assert status.returncode == 0, status.stderr + manager.logs()
    pid = int(manager.wait_for("nomyo-agent.service", "active")["MainPID"])
    st = proc_status(pid)
    assert st["Uid"].split()[0] == str(NOBODY)
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2")
    # LimitMEMLOCK=infinity is clamped to the manager's own limit, not refused.
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    memlock = next(line for line in limits if line.startswith("Max locked memory")).split()
    assert memlock[3:5] == [str(resource.getrlimit(resource.RLIMIT_MEMLOCK)[1])] * 2
    # With PrivateUsers= an unprivileged manager can build the filesystem sandbox: its own user
    # and mount namespaces, / read-only, the state folder writable. Without it, systemd skips
    # the mount namespace silently; the seccomp-based options above still hold.
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root_ro = any(line.split()[4] == "/" and "ro" in line.split()[5].split(",") for line in mounts)
    own_userns = os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    own_mntns = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(
        f"/proc/{manager.proc.pid}/ns/mnt"
    )
    assert (root_ro, own_userns, own_mntns) == (userns, userns, userns)
    keygen = manager.agent("keygen", "--bits", "2048", "--passphrase-stdin", input=b"\n")
    assert keygen.returncode == 0, keygen.stderr + manager.logs()
    result = subprocess.run(
        [*AS_NOBODY, manager.python, "-c", SEAL_OPEN],
        env=manager.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.stdout.strip() == "as nobody", result.stderr + manager.logs()
    assert (Path(manager.env["XDG_STATE_HOME"]) / "nomyo-agent" / "pins.json").exists()
    manager.systemctl("stop", "nomyo-agent.socket")
    props = manager.show("nomyo-agent.service", "Result", "ExecMainStatus")
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), manager.logs()


def test_install_refuses_while_a_hand_started_agent_serves(user_manager: UserManager) -> None:
    # systemd would unbind and rebind the path: the running agent would live on, unreachable.
    started = user_manager.agent("start")
    assert started.returncode == 0, started.stderr
    with AgentConnection.open(user_manager.socket) as conn:
        pid = conn.call(p.Status(), p.StatusReply).pid
    refused = user_manager.agent("install-service")
    assert refused.returncode == 1
    assert f"an agent started outside the service manager (pid {pid}) serves" in refused.stderr
    assert "hint: stop it first (`nomyo-agent stop`)" in refused.stderr
    assert not (user_manager.units / "nomyo-agent.socket").exists()  # nothing written
    assert user_manager.agent("stop").returncode == 0
    out = install(user_manager)
    assert f"the agent now starts on the first connection to {user_manager.socket}\n" in out
    with AgentConnection.open(user_manager.socket, timeout=30) as conn:
        assert conn.call(p.Status(), p.StatusReply).pid != pid
    assert install(user_manager)  # re-installing over the running service is fine
    user_manager.systemctl("stop", "nomyo-agent.socket")


def test_chat_through_the_client_with_the_service_agent(user_manager: UserManager) -> None:
    import nomyo_client as nc
    from nomyo_devserver import DevServer

    install(user_manager)
    keygen = user_manager.agent("keygen", "--bits", "2048", "--passphrase-stdin", input=b"\n")
    assert keygen.returncode == 0, keygen.stderr + user_manager.logs()
    user_manager.systemctl("stop", "nomyo-agent.service")  # the socket stays
    user_manager.wait_for("nomyo-agent.service", "inactive")
    # A new agent starts locked; unlocking is the user's step (no passphrase: no prompt).
    unlock = user_manager.agent("unlock")
    assert unlock.returncode == 0, unlock.stderr + user_manager.logs()
    user_manager.wait_for("nomyo-agent.service", "active")  # that connection started it

    async def chat(url: str) -> dict[str, object]:
        client = nc.SecureChatCompletion(
            url, allow_http=True, agent_socket=user_manager.socket, autostart=False
        )
        async with client:
            messages = [{"role": "user", "content": "hello from systemd"}]
            return await client.create(model="devserver/echo", messages=messages)

    with DevServer(key_bits=2048) as router:
        answer = asyncio.run(chat(router.url))
    assert "hello from systemd" in answer["choices"][0]["message"]["content"]  # type: ignore[index]
    assert answer["_metadata"]["is_encrypted"] is True  # type: ignore[index]
    user_manager.systemctl("stop", "nomyo-agent.socket")


def test_socket_activated_proxy_serves_an_openai_request_from_its_sandbox(
    user_manager: UserManager,
) -> None:
    import httpx

    from nomyo_devserver import DevServer

    out = install(user_manager, "--proxy")
    assert "ran systemctl --user enable --now nomyo-proxy.socket" in out
    keygen = user_manager.agent("keygen", "--bits", "2048", "--passphrase-stdin", input=b"\n")
    assert keygen.returncode == 0, keygen.stderr + user_manager.logs()
    with socket.socket() as probe:  # a free port instead of 12480, which may be taken here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sockets = user_manager.units / "nomyo-proxy.socket.d"
    sockets.mkdir()
    (sockets / "port.conf").write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    proxy = shutil.which("nomyo-proxy", path=user_manager.env["PATH"])
    assert proxy is not None
    log = Path(user_manager.env["HOME"]) / "proxy-service.log"
    service = user_manager.units / "nomyo-proxy.service.d"
    service.mkdir()
    with DevServer(key_bits=2048) as router:
        # The router comes from the environment file, as users set it; only --allow-http (for
        # the local devserver) needs the command line.
        env_file = Path(user_manager.env["XDG_CONFIG_HOME"]) / "nomyo-agent" / "proxy.env"
        env_file.parent.mkdir(mode=0o700, exist_ok=True)
        env_file.write_text(f"NOMYO_BASE_URL={router.url}\n")
        (service / "test.conf").write_text(
            f"[Service]\nExecStart=\nExecStart={proxy} serve --allow-http\n"
            f"StandardOutput=append:{log}\nStandardError=inherit\n"
        )
        user_manager.systemctl("daemon-reload")
        user_manager.systemctl("restart", "nomyo-proxy.socket")
        token = subprocess.run(
            [proxy, "token", "create", "sandboxed-app"], env=user_manager.env,
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        assert user_manager.show("nomyo-proxy.service", "ActiveState")["ActiveState"] == "inactive"
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "devserver/echo",
                  "messages": [{"role": "user", "content": "hello from the proxy's sandbox"}]},
            headers={"Authorization": f"Bearer {token}"}, timeout=60,
        )  # fmt: skip
    logs = log.read_text(errors="replace") if log.exists() else ""
    assert answer.status_code == 200, f"{answer.text}\n{logs}\n{user_manager.logs()}"
    assert "hello from the proxy's sandbox" in answer.json()["choices"][0]["message"]["content"]
    props = user_manager.wait_for("nomyo-proxy.service", "active")
    st = proc_status(int(props["MainPID"]))
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    status = user_manager.agent("status")
    assert "nomyo-proxy: sandboxed-app" in status.stdout, status.stdout
    for unit in ("nomyo-proxy.socket", "nomyo-agent.socket"):
        user_manager.systemctl("stop", unit)
