"""The shipped systemd units: static checks with systemd-analyze, and the installer's rendering.

``systemd-analyze verify`` exits 0 on warnings, so every test here fails on any stderr output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nomyo_agent import _proxy_service as _ps
from nomyo_agent import _service_plan, _units
from nomyo_proxy._cli import DEFAULT_PORT
from support.desktop import require_programs
from support.userdirs import as_user

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "systemd"
VENV_SCRIPT = Path(sys.executable).parent / "nomyo-agent"
EXPOSURE_LIMIT = 1.7  # docs/running.md records the measured figure


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """HOME and XDG_RUNTIME_DIR for systemd-analyze, with the program where %h expects it."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "nomyo-agent").symlink_to(VENV_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    return env


def analyze(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    require_programs("systemd-analyze")
    return subprocess.run(
        ["systemd-analyze", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_shipped_units_are_the_installer_rendering() -> None:
    # The repository's files are plan() output for a pipx/uv-tool install; they must not drift.
    assert (SHIPPED / _units.SOCKET_UNIT).read_text() == _units.render_socket_unit()
    assert (SHIPPED / _units.SERVICE_UNIT).read_text() == _units.render_service_unit(
        ["%h/.local/bin/nomyo-agent"], "%h/.local/state/nomyo-agent", specifiers=True
    )


def test_shipped_units_verify_clean(user_env: dict[str, str], tmp_path: Path) -> None:
    units = [str(SHIPPED / _units.SOCKET_UNIT), str(SHIPPED / _units.SERVICE_UNIT)]
    result = analyze(user_env, "verify", "--user", *units)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze verify warned:\n{result.stderr}"


def test_verify_catches_a_broken_unit(user_env: dict[str, str], tmp_path: Path) -> None:
    # The check above must be able to fail: a misspelt option is a warning (exit 0) on stderr.
    # Both units in one folder: systemd resolves the socket's service next to the socket.
    socket = tmp_path / _units.SOCKET_UNIT
    socket.write_text((SHIPPED / _units.SOCKET_UNIT).read_text())
    broken = tmp_path / _units.SERVICE_UNIT
    broken.write_text((SHIPPED / _units.SERVICE_UNIT).read_text().replace("UMask=", "UMaks="))
    result = analyze(user_env, "verify", "--user", str(socket), str(broken))
    assert result.returncode == 0  # only a warning: hence the stderr checks
    assert "Unknown key 'UMaks'" in result.stderr


def write_and_verify(env: dict[str, str], plan: _service_plan.Plan) -> None:
    """Write what install-service would write, and `systemd-analyze verify` it: no warnings."""
    for file in plan.files:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_bytes(file.content)
    result = analyze(env, "verify", "--user", *(str(f.path) for f in plan.files))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_installer_units_verify_clean(
    user_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What install-service writes for *this* venv, with its absolute paths, verifies too.
    env = dict(user_env, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    as_user(monkeypatch, env)
    plan = _service_plan.plan("linux", _service_plan.program_argv())
    write_and_verify(env, plan)
    service = plan.files[1].content.decode()
    assert f"ExecStart={VENV_SCRIPT} serve\n" in service
    assert f"ReadWritePaths={user_env['HOME']}/.local/state/nomyo-agent\n" in service


def test_exposure_score(user_env: dict[str, str]) -> None:
    result = analyze(
        user_env,
        "security", "--offline=true", "--user", f"--threshold={int(EXPOSURE_LIMIT * 10)}",
        str(SHIPPED / _units.SERVICE_UNIT),
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= EXPOSURE_LIMIT, result.stdout
    # The options docs/running.md says we keep must be counted as in force.
    for kept in ("RestrictAddressFamilies=~AF_(INET|INET6)", "IPAddressDeny=", "PrivateUsers="):
        line = next(x for x in result.stdout.splitlines() if kept in x)
        assert line.lstrip().startswith("✓"), line


def test_socket_unit_content() -> None:
    text = _units.render_socket_unit()
    for line in (
        "ListenStream=%t/nomyo-agent/agent.sock",
        "SocketMode=0600",
        "DirectoryMode=0700",
        "FileDescriptorName=agent",
        "RemoveOnStop=yes",
    ):
        assert f"\n{line}\n" in text
    assert "ListenStream=/tmp/x.sock\n" in _units.render_socket_unit("/tmp/x.sock")


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("/usr/bin/nomyo-agent", "/usr/bin/nomyo-agent"),
        ("/home/a b/bin/nomyo-agent", '"/home/a b/bin/nomyo-agent"'),
        ("/opt/100%/x", "/opt/100%%/x"),
        ("/opt/$HOME/x", "/opt/$$HOME/x"),
        ('/opt/q"uote', '"/opt/q\\"uote"'),
        ("/opt/semi;colon", '"/opt/semi;colon"'),
    ],
)
def test_exec_quote(arg: str, quoted: str) -> None:
    assert _units.exec_quote(arg) == quoted


def test_exec_quote_survives_systemd(
    user_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A program path with a space and a percent sign: systemd must parse back the same path.
    odd = tmp_path / "my tools" / "50%"
    odd.mkdir(parents=True)
    (odd / "nomyo-agent").symlink_to(VENV_SCRIPT)
    env = dict(user_env, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    as_user(monkeypatch, env)
    plan = _service_plan.plan("linux", [str(odd / "nomyo-agent")])
    for file in plan.files:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_bytes(file.content)
    result = analyze(env, "verify", "--user", *(str(f.path) for f in plan.files))
    assert result.stderr.strip() == "", result.stderr
    missing = _service_plan.plan("linux", [str(tmp_path / "my tools" / "nope")])
    for file in missing.files:
        file.path.write_bytes(file.content)
    result = analyze(env, "verify", "--user", *(str(f.path) for f in missing.files))
    assert "my tools/nope" in result.stderr  # systemd looked for exactly that path


# --- nomyo-proxy's units (install-service --proxy) -------------------------------------------

PROXY_UNITS = (_ps.PROXY_SOCKET_UNIT, _ps.PROXY_SERVICE_UNIT)


def test_shipped_proxy_units_are_the_installer_rendering() -> None:
    assert (SHIPPED / _ps.PROXY_SOCKET_UNIT).read_text() == _ps.render_proxy_socket_unit()
    assert (SHIPPED / _ps.PROXY_SERVICE_UNIT).read_text() == _ps.render_proxy_service_unit(
        ["%h/.local/bin/nomyo-proxy"],
        "%h/.local/state/nomyo-agent",
        "%h/.config/nomyo-agent/proxy.env",
        _units.SYSTEMD_LISTEN,
        quote=lambda a: a,
        agent_socket_unit=_units.SOCKET_UNIT,
    )
    assert _ps.PROXY_PORT == DEFAULT_PORT


def test_shipped_proxy_units_verify_clean(user_env: dict[str, str]) -> None:
    (Path(user_env["HOME"]) / ".local" / "bin" / "nomyo-proxy").symlink_to(
        VENV_SCRIPT.with_name("nomyo-proxy")
    )
    units = [str(SHIPPED / u) for u in (_units.SOCKET_UNIT, _units.SERVICE_UNIT, *PROXY_UNITS)]
    result = analyze(user_env, "verify", "--user", *units)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze verify warned:\n{result.stderr}"
    text = (SHIPPED / _ps.PROXY_SOCKET_UNIT).read_text()
    assert "\nListenStream=127.0.0.1:12480\n" in text
    assert "\nFileDescriptorName=proxy\n" in text


def test_install_service_proxy_writes_units_that_verify(
    user_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(user_env, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    as_user(monkeypatch, env)
    plan = _service_plan.plan("linux", _service_plan.program_argv(), proxy=True)
    names = [f.path.name for f in plan.files]
    assert names == [_units.SOCKET_UNIT, _units.SERVICE_UNIT, *PROXY_UNITS]
    write_and_verify(env, plan)
    service = plan.files[3].content.decode()
    assert f"ExecStart={VENV_SCRIPT.with_name('nomyo-proxy')} serve\n" in service
    assert f"EnvironmentFile=-{tmp_path}/cfg/nomyo-agent/proxy.env\n" in service
    assert ("systemctl", "--user", "enable", "--now", _ps.PROXY_SOCKET_UNIT) in plan.start
    # The proxy's units are stopped by a command of their own: if they were never installed,
    # that one fails and the agent's is still disabled.
    assert ("systemctl", "--user", "disable", "--now", *PROXY_UNITS) in plan.stop
    assert len(plan.stop) == 2
