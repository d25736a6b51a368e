"""macOS: the LaunchAgent plist and ``launch_activate_socket``, checked where launchd cannot run.

launchd exists only on macOS. What is checked here: the plist parses with ``plistlib`` and names
the socket and program the installer writes; the ctypes marshalling of
``launch_activate_socket(const char *, int **, size_t *)`` runs against a stand-in with the same
C signature (a ctypes callback that mallocs the fd array as launchd does, freed by the real libc
``free``), handing over real listening sockets.
"""

from __future__ import annotations

import ctypes
import errno
import os
import plistlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomyo_agent import _launchd, _service_plan, _units
from nomyo_agent import _proxy_service as _ps
from nomyo_agent._libc import c_function
from nomyo_agent.errors import AgentError
from support.userdirs import as_user

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "launchd" / f"{_units.LABEL}.plist"
SHIPPED_ENV = ROOT / "launchd" / f"{_units.ENV_LABEL}.plist"

_malloc = c_function("malloc", ctypes.c_void_p, (ctypes.c_size_t,))
_free = c_function("free", None, (ctypes.c_void_p,))
ACTIVATE = ctypes.CFUNCTYPE(ctypes.c_int, *_launchd.ACTIVATE_ARGTYPES)


class FakeLaunchd:
    """Behaves as libSystem's launch_activate_socket for one named socket."""

    def __init__(self, sockets: dict[str, list[int]], error: int = 0) -> None:
        self.sockets = sockets
        self.error = error
        self.freed: list[int] = []
        self.launch_activate_socket = ACTIVATE(self._activate)

    def _activate(self, name: bytes, fds_out: object, count_out: object) -> int:
        if self.error:
            return self.error
        fds = self.sockets.get(name.decode())
        if fds is None:
            return errno.ENOENT
        array = _malloc(ctypes.sizeof(ctypes.c_int) * len(fds))
        ints = ctypes.cast(array, ctypes.POINTER(ctypes.c_int))
        for i, fd in enumerate(fds):
            ints[i] = fd
        fds_out[0] = ints  # type: ignore[index]
        count_out[0] = len(fds)  # type: ignore[index]
        return 0

    def free(self, pointer: ctypes.c_void_p) -> None:
        self.freed.append(pointer.value or 0)
        _free(pointer)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "agent.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    yield sock, path
    sock.close()


def test_inherited_socket_takes_the_named_socket(listening: tuple[socket.socket, str]) -> None:
    sock, path = listening
    fd = os.dup(sock.fileno())
    extra = os.dup(sock.fileno())  # a second fd for the same name is closed, not leaked
    fake = FakeLaunchd({"agent": [fd, extra]})
    got = _launchd.inherited_socket(lib=fake)
    assert got is not None
    assert got.fileno() == fd
    assert got.getblocking() is False
    assert len(fake.freed) == 1
    assert fake.freed[0] != 0
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(extra)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        got.setblocking(True)
        conn, _ = got.accept()
        conn.close()
    got.close()


@pytest.mark.parametrize("error", [errno.ESRCH, errno.ENOENT])
def test_not_started_by_launchd(error: int) -> None:
    assert _launchd.inherited_socket(lib=FakeLaunchd({}, error=error)) is None


def test_unknown_name_is_not_activation() -> None:
    assert _launchd.activate_socket("other", lib=FakeLaunchd({"agent": [99]})) == []


def test_already_taken_is_an_error() -> None:
    with pytest.raises(_launchd.LaunchdError, match="did not hand over socket 'agent'"):
        _launchd.inherited_socket(lib=FakeLaunchd({}, error=errno.EALREADY))


def test_no_op_off_macos() -> None:
    assert _launchd.inherited_socket() is None


def test_socket_key_matches_the_plist() -> None:
    assert _launchd.SOCKET_NAME == _units.SOCKET_NAME


def test_shipped_plists_are_the_installer_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path("/Users/USERNAME")
    as_user(monkeypatch, {"HOME": str(home)})
    plan = _service_plan.plan("darwin", [f"{home}/.local/bin/nomyo-agent"])
    assert SHIPPED.read_bytes() == plan.files[0].content
    assert SHIPPED_ENV.read_bytes() == plan.files[1].content


def test_plist_names_what_the_installer_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path("/Users/ada")
    as_user(monkeypatch, {"HOME": str(home)})
    argv = ["/opt/nomyo/bin/nomyo-agent"]
    plan = _service_plan.plan("darwin", argv, uid=501)
    file, env_file = plan.files
    assert file.path == home / "Library" / "LaunchAgents" / "ai.nomyo.agent.plist"
    doc = plistlib.loads(file.content)
    assert doc["Label"] == "ai.nomyo.agent"
    assert doc["ProgramArguments"] == [*argv, "serve"]
    sock = doc["Sockets"][_launchd.SOCKET_NAME]
    assert sock["SockPathName"] == plan.socket_path
    assert plan.socket_path == str(
        home / "Library" / "Application Support" / "nomyo-agent" / "agent.sock"
    )
    assert sock["SockPathMode"] == 0o600
    assert doc["EnvironmentVariables"]["NOMYO_AGENT_SOCK"] == plan.socket_path
    assert len(plan.socket_path.encode()) < 104  # sun_path on macOS
    # Discovery: a second agent sets NOMYO_AGENT_SOCK for the GUI session at every login.
    assert env_file.path == home / "Library" / "LaunchAgents" / "ai.nomyo.agent.environment.plist"
    env_doc = plistlib.loads(env_file.content)
    assert env_doc["Label"] == "ai.nomyo.agent.environment"
    assert env_doc["ProgramArguments"] == [
        "/bin/launchctl", "setenv", "NOMYO_AGENT_SOCK", plan.socket_path,
    ]  # fmt: skip
    assert env_doc["RunAtLoad"] is True
    assert plan.start == (
        ("launchctl", "bootstrap", "gui/501", str(file.path)),
        ("launchctl", "bootstrap", "gui/501", str(env_file.path)),
    )
    assert ("launchctl", "unsetenv", "NOMYO_AGENT_SOCK") in plan.stop
    assert plan.undo == "/opt/nomyo/bin/nomyo-agent uninstall-service"


def test_plist_with_an_explicit_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, {"HOME": "/Users/ada"})
    plan = _service_plan.plan("darwin", ["/x/nomyo-agent"], socket="/s/a.sock")
    doc = plistlib.loads(plan.files[0].content)
    assert doc["Sockets"]["agent"]["SockPathName"] == "/s/a.sock"


def test_socket_path_too_long_for_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, {"HOME": "/Users/" + "a" * 80})
    with pytest.raises(AgentError, match="longer than macOS allows"):
        _service_plan.plan("darwin", ["/x/nomyo-agent"])


def test_clients_default_to_the_launchagents_socket_on_macos(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nomyo_agent import paths

    as_user(monkeypatch, {"HOME": "/Users/someone"})
    expected = _service_plan.launchd_socket_path()
    assert paths.default_socket_path({}, platform="darwin") == expected
    assert expected == "/Users/someone/Library/Application Support/nomyo-agent/agent.sock"


def test_shipped_proxy_plist_is_the_installer_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path("/Users/USERNAME")
    as_user(monkeypatch, {"HOME": str(home)})
    plan = _service_plan.plan("darwin", [f"{home}/.local/bin/nomyo-agent"], proxy=True)
    assert (ROOT / "launchd" / f"{_ps.PROXY_LABEL}.plist").read_bytes() == plan.files[2].content


def test_proxy_plist_listens_on_loopback_and_names_the_socket_the_proxy_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = Path("/Users/ada")
    as_user(monkeypatch, {"HOME": str(home)})
    plan = _service_plan.plan("darwin", ["/opt/nomyo/bin/nomyo-agent"], proxy=True, uid=501)
    file = plan.files[2]
    assert file.path == home / "Library" / "LaunchAgents" / "ai.nomyo.proxy.plist"
    doc = plistlib.loads(file.content)
    assert doc["ProgramArguments"] == ["/opt/nomyo/bin/nomyo-proxy", "serve"]
    assert doc["Sockets"] == {
        "proxy": {"SockNodeName": "127.0.0.1", "SockServiceName": "12480", "SockFamily": "IPv4"}
    }
    assert doc["EnvironmentVariables"]["NOMYO_AGENT_SOCK"] == plan.socket_path
    assert ("launchctl", "bootstrap", "gui/501", str(file.path)) in plan.start
    assert ("launchctl", "bootout", "gui/501/ai.nomyo.proxy") in plan.stop
    assert _ps.proxy_argv(["/py", "-m", "nomyo_agent"]) == ["/py", "-m", "nomyo_proxy"]


def test_libsystem_calls_come_from_the_one_c_library_loader() -> None:
    """``load_libsystem`` takes its functions through ``_libc``: off macOS the C library has
    ``free`` but no ``launch_activate_socket``, and the error names the missing symbol."""
    with pytest.raises(AttributeError, match="launch_activate_socket"):
        _launchd.load_libsystem()


def test_each_c_function_has_its_own_signature() -> None:
    """Two callers typing the same C function differently do not overwrite each other."""
    as_size = c_function("strlen", ctypes.c_size_t, (ctypes.c_char_p,))
    as_int = c_function("strlen", ctypes.c_int, (ctypes.c_char_p,))
    assert as_size.restype is ctypes.c_size_t
    assert as_int.restype is ctypes.c_int
    assert as_size(b"four") == as_int(b"four") == 4
