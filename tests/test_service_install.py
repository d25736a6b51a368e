"""``nomyo-agent install-service`` / ``uninstall-service`` without a service manager to talk to.

What the installer writes, where, with which paths, and what it prints. With a real user
manager, tests/test_systemd_user_manager.py runs the same commands end to end.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nomyo_agent import _service_plan
from nomyo_agent.errors import AgentError
from support.agent import RunningAgent
from support.userdirs import as_user


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME whose session has no reachable user manager."""
    home = tmp_path / "home"
    home.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    for var in list(os.environ):
        if var.startswith(("XDG_", "DBUS_", "NOMYO_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return home


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nomyo_agent", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_print_shows_everything_and_writes_nothing(home: Path) -> None:
    result = run_cli("install-service", "--print")
    assert result.returncode == 0, result.stderr
    units = home / ".config" / "systemd" / "user"
    assert f"# {units / 'nomyo-agent.socket'}\n[Unit]" in result.stdout
    assert f"# {units / 'nomyo-agent.service'}\n[Unit]" in result.stdout
    assert "# then: systemctl --user enable --now nomyo-agent.socket" in result.stdout
    assert f"ExecStart={Path(sys.executable).parent / 'nomyo-agent'} serve" in result.stdout
    assert not (home / ".config").exists()
    assert not (home / ".local").exists()


def test_install_without_a_manager_writes_and_says_how_to_start(home: Path) -> None:
    result = run_cli("install-service")
    assert result.returncode == 1, result.stderr  # nothing was started: not a success
    units = home / ".config" / "systemd" / "user"
    plan = _service_plan.plan()
    for file in plan.files:
        assert file.path.read_bytes() == file.content
        assert f"wrote {file.path}" in result.stdout
    assert {f.path for f in plan.files} == {
        units / "nomyo-agent.socket",
        units / "nomyo-agent.service",
    }
    assert result.stderr.startswith(
        "nomyo-agent: the service manager of this session does not answer, so nothing was "
        "started (the files are written)\n"
        "hint: in your desktop session, run: systemctl --user daemon-reload && "
    )
    assert result.stdout.rstrip().splitlines()[-1] == f"to undo: {plan.undo}"
    # ReadWritePaths= needs the state folder to exist; it is the agent's own.
    state = home / ".local" / "state" / "nomyo-agent"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert f"ReadWritePaths={state}\n" in (units / "nomyo-agent.service").read_text()

    again = run_cli("uninstall-service")
    assert again.returncode == 0, again.stderr
    for file in plan.files:
        assert not file.path.exists()
        assert f"removed {file.path}" in again.stdout
    assert state.exists()  # the agent's data is not the installer's to remove
    assert run_cli("uninstall-service").stdout == ""  # nothing left: says nothing, still fine


def test_install_without_a_manager_refuses_while_a_hand_started_agent_serves(
    home: Path, agent: RunningAgent
) -> None:
    """The same refusal as with a manager: the units would take this socket at the next login."""
    result = run_cli("--socket", agent.path, "install-service")
    assert result.returncode == 1
    assert f"an agent started outside the service manager (pid {agent.pid})" in result.stderr
    assert "hint: stop it first" in result.stderr
    assert not (home / ".config").exists()  # refused before writing anything


def test_no_start_and_an_explicit_socket(home: Path, tmp_path: Path) -> None:
    listen = str(tmp_path / "custom" / "agent.sock")
    result = run_cli("--socket", listen, "install-service", "--no-start")
    assert result.returncode == 0, result.stderr
    assert "not started (--no-start)" in result.stdout
    socket_unit = home / ".config" / "systemd" / "user" / "nomyo-agent.socket"
    assert f"\nListenStream={listen}\n" in socket_unit.read_text()


def test_a_shell_nomyo_agent_sock_is_not_baked_in(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `eval "$(nomyo-agent start)"` leaves NOMYO_AGENT_SOCK in the shell; the units keep %t.
    monkeypatch.setenv("NOMYO_AGENT_SOCK", "/tmp/elsewhere/agent.sock")
    result = run_cli("install-service", "--print")
    assert "ListenStream=%t/nomyo-agent/agent.sock" in result.stdout
    assert "elsewhere" not in result.stdout


def test_program_argv_prefers_the_console_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _service_plan.program_argv() == [str(Path(sys.executable).parent / "nomyo-agent")]
    bare = tmp_path / "bin" / "python3"
    bare.parent.mkdir()
    bare.symlink_to(sys.executable)
    # No script beside this interpreter: fall back to `python -m`, keeping the venv path as is.
    assert _service_plan.program_argv(str(bare)) == [str(bare), "-P", "-m", "nomyo_agent"]
    as_user(monkeypatch, {"HOME": str(tmp_path)})
    plan = _service_plan.plan("linux", _service_plan.program_argv(str(bare)))
    assert f"ExecStart={bare} -P -m nomyo_agent serve\n" in plan.files[1].content.decode()
    assert plan.undo == f"{bare} -P -m nomyo_agent uninstall-service"


def test_plan_follows_the_xdg_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, {"HOME": "/home/ada", "XDG_CONFIG_HOME": "/cfg", "XDG_STATE_HOME": "/st"})
    plan = _service_plan.plan("linux", ["/x/nomyo-agent"])
    assert [f.path for f in plan.files] == [
        Path("/cfg/systemd/user/nomyo-agent.socket"),
        Path("/cfg/systemd/user/nomyo-agent.service"),
    ]
    assert "ReadWritePaths=/st/nomyo-agent\n" in plan.files[1].content.decode()
    as_user(monkeypatch, {"HOME": "/home/ada", "XDG_STATE_HOME": "rel"})
    relative = _service_plan.plan("linux", ["/x"])
    assert (
        "ReadWritePaths=/home/ada/.local/state/nomyo-agent\n" in relative.files[1].content.decode()
    )


def test_unsupported_platform_is_a_clear_error() -> None:
    with pytest.raises(AgentError, match="does not support win32 yet") as info:
        _service_plan.plan("win32", ["nomyo-agent.exe"])
    assert "nomyo-agent start" in (info.value.hint or "")
