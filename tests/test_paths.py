"""``paths`` owns every location on every platform: checked per platform against each OS's
conventions (written out here), against platformdirs (whose conventions ``paths`` states without
importing it), and by a scan that finds no other module building these paths itself."""

from __future__ import annotations

import ast
from pathlib import Path, PureWindowsPath

import platformdirs.macos
import platformdirs.unix
import platformdirs.windows
import pytest

from nomyo_agent import paths
from nomyo_agent.paths import user_dirs

ROOT = Path(__file__).resolve().parents[1]
ADA = {"HOME": "/home/ada"}
XDG_VARS = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME")


# --- each OS's conventions, spelled out -----------------------------------------------------


def test_linux_follows_the_xdg_base_directory_spec() -> None:
    dirs = user_dirs("linux", ADA)
    assert str(dirs.config) == "/home/ada/.config/nomyo-agent"
    assert str(dirs.state) == "/home/ada/.local/state/nomyo-agent"
    assert str(dirs.log) == "/home/ada/.local/state/nomyo-agent/log"
    assert str(dirs.systemd_units) == "/home/ada/.config/systemd/user"
    assert str(dirs.xdg_autostart) == "/home/ada/.config/autostart"
    moved = user_dirs("linux", {**ADA, "XDG_CONFIG_HOME": "/c", "XDG_STATE_HOME": "/s"})
    assert (str(moved.config), str(moved.state), str(moved.log)) == (
        "/c/nomyo-agent", "/s/nomyo-agent", "/s/nomyo-agent/log",
    )  # fmt: skip
    assert str(moved.systemd_units) == "/c/systemd/user"


def test_relative_xdg_variables_are_ignored_as_the_spec_says() -> None:
    dirs = user_dirs("linux", {**ADA, "XDG_CONFIG_HOME": "rel", "XDG_STATE_HOME": "./s"})
    assert dirs == user_dirs("linux", ADA)
    assert paths.runtime_dir({"XDG_RUNTIME_DIR": "run"}) is None


def test_macos_uses_the_library_folders() -> None:
    dirs = user_dirs("darwin", {"HOME": "/Users/ada", "XDG_CONFIG_HOME": "/ignored"})
    support = "/Users/ada/Library/Application Support/nomyo-agent"
    assert (str(dirs.config), str(dirs.state)) == (support, support)
    assert str(dirs.log) == "/Users/ada/Library/Logs/nomyo-agent"
    assert str(dirs.launch_agents) == "/Users/ada/Library/LaunchAgents"
    assert paths.darwin_socket_path(Path("/Users/ada")) == f"{support}/agent.sock"
    assert paths.default_socket_path({"HOME": "/Users/ada"}, "darwin") == f"{support}/agent.sock"


def test_windows_uses_the_local_application_data_folder() -> None:
    env = {
        "USERPROFILE": r"C:\Users\ada",
        "LOCALAPPDATA": r"C:\Users\ada\AppData\Local",
        "APPDATA": r"C:\Users\ada\AppData\Roaming",
    }
    dirs = user_dirs("win32", env)
    local = PureWindowsPath(r"C:\Users\ada\AppData\Local\nomyo-agent")
    assert PureWindowsPath(dirs.config) == PureWindowsPath(dirs.state) == local
    assert PureWindowsPath(dirs.log) == local / "Logs"


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


def test_the_current_process_gets_its_own_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/bob")
    for var in XDG_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/st")
    if paths.sys.platform.startswith("linux"):
        assert paths.state_dir() == Path("/st/nomyo-agent")
        assert paths.config_path() == Path("/home/bob/.config/nomyo-agent/config.toml")
        assert paths.log_path() == Path("/st/nomyo-agent/log/agent.log")
        assert paths.log_path("nomyo-proxy.log").parent == paths.log_path().parent


# --- the same answers as platformdirs -------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [ADA, {**ADA, "XDG_CONFIG_HOME": "/x/conf", "XDG_STATE_HOME": "/x/state"}],
    ids=["defaults", "xdg"],
)
def test_linux_agrees_with_platformdirs(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for var in XDG_VARS:
        monkeypatch.delenv(var, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    theirs = platformdirs.unix.Unix(paths.APP, appauthor=False)
    ours = user_dirs("linux", env)
    assert str(ours.config) == theirs.user_config_dir
    assert str(ours.state) == theirs.user_state_dir
    assert str(ours.log) == theirs.user_log_dir


def test_macos_agrees_with_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in XDG_VARS:  # platformdirs 4.x also reads XDG_* on macOS; macOS sets none
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/Users/ada")
    theirs = platformdirs.macos.MacOS(paths.APP, appauthor=False)
    ours = user_dirs("darwin", {"HOME": "/Users/ada"})
    assert str(ours.config) == theirs.user_config_dir
    assert str(ours.state) == theirs.user_state_dir
    assert str(ours.log) == theirs.user_log_dir


def test_windows_agrees_with_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LOCALAPPDATA": r"C:\Users\ada\AppData\Local",
        "APPDATA": r"C:\Users\ada\AppData\Roaming",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Off Windows platformdirs cannot ask the shell; its own fallback reads the same variables.
    monkeypatch.setattr(
        platformdirs.windows,
        "get_win_folder",
        platformdirs.windows.get_win_folder_from_env_vars,
    )
    theirs = platformdirs.windows.Windows(paths.APP, appauthor=False)
    ours = user_dirs("win32", env)
    assert PureWindowsPath(ours.config) == PureWindowsPath(theirs.user_config_dir)
    assert PureWindowsPath(ours.state) == PureWindowsPath(theirs.user_state_dir)
    assert PureWindowsPath(ours.log) == PureWindowsPath(theirs.user_log_dir)


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
