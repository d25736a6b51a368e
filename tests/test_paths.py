"""``paths`` owns every location on every platform: the folders platformdirs answers, checked
per platform against the concrete folders docs/running.md lists (platformdirs' class for each
platform, chosen by ``user_dirs(platform)``, with the environment set here); the socket rules,
which are ours; platformdirs kept off the clients' start-up path; and a scan that finds no
other module building these paths itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import platformdirs.windows
import pytest

from nomyo_agent import paths
from nomyo_agent.paths import user_dirs
from support.userdirs import as_user

ROOT = Path(__file__).resolve().parents[1]
ADA = {"HOME": "/home/ada"}


# --- each platform's folders, concretely (docs/running.md, "Where files live") --------------


def test_linux_follows_the_xdg_base_directory_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, ADA)
    dirs = user_dirs("linux")
    assert str(dirs.config) == "/home/ada/.config/nomyo-agent"
    assert str(dirs.state) == "/home/ada/.local/state/nomyo-agent"
    assert str(dirs.log) == "/home/ada/.local/state/nomyo-agent/log"
    assert str(dirs.systemd_units) == "/home/ada/.config/systemd/user"
    assert str(dirs.xdg_autostart) == "/home/ada/.config/autostart"
    as_user(monkeypatch, {**ADA, "XDG_CONFIG_HOME": "/c", "XDG_STATE_HOME": "/s"})
    moved = user_dirs("linux")
    assert (str(moved.config), str(moved.state), str(moved.log)) == (
        "/c/nomyo-agent", "/s/nomyo-agent", "/s/nomyo-agent/log",
    )  # fmt: skip
    assert str(moved.systemd_units) == "/c/systemd/user"
    assert str(moved.xdg_autostart) == "/c/autostart"


def test_relative_xdg_variables_are_ignored_as_the_spec_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_user(monkeypatch, ADA)
    default = user_dirs("linux")
    as_user(monkeypatch, {**ADA, "XDG_CONFIG_HOME": "rel", "XDG_STATE_HOME": "./s"})
    assert user_dirs("linux") == default
    assert paths.runtime_dir({"XDG_RUNTIME_DIR": "run"}) is None


def test_macos_uses_the_library_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, {"HOME": "/Users/ada"})  # macOS sets no XDG_* variable
    dirs = user_dirs("darwin")
    support = "/Users/ada/Library/Application Support/nomyo-agent"
    assert (str(dirs.config), str(dirs.state)) == (support, support)
    assert str(dirs.log) == "/Users/ada/Library/Logs/nomyo-agent"
    assert str(dirs.launch_agents) == "/Users/ada/Library/LaunchAgents"
    assert paths.darwin_socket_path() == f"{support}/agent.sock"
    assert paths.default_socket_path({}, "darwin") == f"{support}/agent.sock"


def test_windows_uses_the_local_application_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "USERPROFILE": r"C:\Users\ada",
        "LOCALAPPDATA": r"C:\Users\ada\AppData\Local",
        "APPDATA": r"C:\Users\ada\AppData\Roaming",
    }.items():
        monkeypatch.setenv(name, value)
    if sys.platform != "win32":
        # Off Windows platformdirs cannot ask the shell; its own fallback reads the variables.
        monkeypatch.setattr(
            platformdirs.windows,
            "get_win_folder",
            platformdirs.windows.get_win_folder_from_env_vars,
        )
    dirs = user_dirs("win32")
    local = PureWindowsPath(r"C:\Users\ada\AppData\Local\nomyo-agent")
    assert PureWindowsPath(dirs.config) == PureWindowsPath(dirs.state) == local
    assert PureWindowsPath(dirs.log) == local / "Logs"


def test_the_current_process_gets_its_own_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, {"HOME": "/home/bob", "XDG_STATE_HOME": "/st"})
    if sys.platform.startswith("linux"):
        assert paths.state_dir() == Path("/st/nomyo-agent")
        assert paths.config_path() == Path("/home/bob/.config/nomyo-agent/config.toml")
        assert paths.log_path() == Path("/st/nomyo-agent/log/agent.log")
        assert paths.log_path("nomyo-proxy.log").parent == paths.log_path().parent


# --- the socket: our rules ------------------------------------------------------------------


def test_the_socket_follows_the_runtime_folder_then_the_temp_folder() -> None:
    assert paths.default_socket_path({"XDG_RUNTIME_DIR": "/run/user/7"}, "linux") == (
        "/run/user/7/nomyo-agent/agent.sock"
    )
    fallback = paths.default_socket_path({"TMPDIR": "/var/tmp"}, "linux")
    assert Path(fallback).parent.name.startswith("nomyo-agent-")
    assert fallback.startswith("/var/tmp/")


def test_starters_lock_beside_the_socket() -> None:
    assert paths.start_lock_path("/run/user/7/nomyo-agent/agent.sock") == (
        "/run/user/7/nomyo-agent/agent.sock.start"
    )


@pytest.mark.parametrize("runtime", [True, False], ids=["runtime-dir", "temp-dir"])
def test_a_client_finding_its_socket_does_not_import_platformdirs(
    monkeypatch: pytest.MonkeyPatch, runtime: bool
) -> None:
    """Clients pay for platformdirs only when they need a folder (and on macOS, for the socket)."""
    env = {"HOME": "/home/ada", "PATH": "/usr/bin:/bin"}
    if runtime:
        env["XDG_RUNTIME_DIR"] = "/run/user/7"
    code = (
        "import sys, nomyo_client\n"
        "from nomyo_agent import paths\n"
        "print(paths.socket_path())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'platformdirs'))\n"
        "paths.state_dir()\n"
        "print('platformdirs' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    sock, loaded, after = out.stdout.splitlines()
    assert sock.endswith("/nomyo-agent/agent.sock") or "/nomyo-agent-" in sock
    assert loaded == "[]"
    assert after == "True"  # the test would pass vacuously if the probe could not see it


# --- nobody else builds these paths ---------------------------------------------------------

PACKAGES = ("agent/nomyo_agent", "client/nomyo_client", "tray/nomyo_tray",
            "devserver/nomyo_devserver", "proxy/nomyo_proxy", "bench")  # fmt: skip
# A name of a platform folder variable, or a folder name only the conventions use.
FOLDER_NAMES = {"Library", "LaunchAgents", "Application Support", "Logs", ".config", ".local",
                "APPDATA", "LOCALAPPDATA", "autostart"}  # fmt: skip
# Modules that set or pass on these variables for a child, and compute no location from them.
SETS_ENVIRONMENT = {
    "agent/nomyo_agent/_pinentry_env.py": "passes XDG_RUNTIME_DIR on to pinentry (Wayland)",
    "devserver/nomyo_devserver/session.py": "gives a throwaway session its own XDG folders",
}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings or f-string pieces of messages."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _offences(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] == "platformdirs" for n in names):
                found.append(f"{rel}:{node.lineno}: imports platformdirs")
    if rel in SETS_ENVIRONMENT:
        return found
    for line, text in _strings(tree):
        parts = text.replace("\\", "/").split("/")
        if text.startswith("XDG_") and text[4:].replace("_", "").isupper():
            found.append(f"{rel}:{line}: reads {text}")
        elif any(part in FOLDER_NAMES for part in parts):
            found.append(f"{rel}:{line}: builds a path with {text!r}")
    return found


def test_no_other_module_builds_these_paths() -> None:
    files = [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "agent/nomyo_agent/paths.py"
    ]
    assert len(files) > 50
    offences = [line for path in files for line in _offences(path)]
    assert offences == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan above is not vacuous: each way of building a path here is reported."""
    code = (
        "import platformdirs\nimport os\nfrom pathlib import Path\n"
        "a = os.environ.get('XDG_STATE_HOME')\nb = Path.home() / 'Library' / 'Logs'\n"
        "c = os.environ['APPDATA']\nd = '~/.config/x'\n"
    )
    target = tmp_path / "agent" / "nomyo_agent" / "sample.py"
    target.parent.mkdir(parents=True)
    target.write_text(code)
    found = {f.split(": ", 1)[1] for f in _offences(target, tmp_path)}
    assert found == {
        "imports platformdirs", "reads XDG_STATE_HOME", "builds a path with 'Library'",
        "builds a path with 'Logs'", "builds a path with 'APPDATA'",
        "builds a path with '~/.config/x'",
    }  # fmt: skip
