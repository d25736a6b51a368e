"""``_units``: the text of the agent's systemd units and launchd plists, rendered pure (inputs to
text). Checked here exactly and by parsing; ``test_systemd_units.py`` has systemd itself verify
and score the same texts, ``test_launchd.py`` checks the plists against launchd's contract."""

from __future__ import annotations

import plistlib

from nomyo_agent import _units
from nomyo_agent._unit_sandbox import SANDBOX


def _entries(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order: systemd repeats keys, so no dict."""
    section, found = "", []
    for line in unit.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.append((section, key, value))
    return found


def test_the_socket_unit_exactly() -> None:
    assert _units.render_socket_unit("/run/user/7/nomyo-agent/agent.sock") == (
        "[Unit]\n"
        "Description=nomyo-agent socket (end-to-end encrypted LLM inference identity)\n"
        "\n"
        "[Socket]\n"
        "ListenStream=/run/user/7/nomyo-agent/agent.sock\n"
        "SocketMode=0600\n"
        "DirectoryMode=0700\n"
        "FileDescriptorName=agent\n"
        "# The socket file belongs to systemd: it goes when the unit stops, not when the agent "
        "exits.\n"
        "RemoveOnStop=yes\n"
        "\n"
        "[Install]\n"
        "WantedBy=sockets.target\n"
    )
    assert "ListenStream=%t/nomyo-agent/agent.sock\n" in _units.render_socket_unit()


def test_the_service_unit_runs_the_program_in_the_sandbox() -> None:
    text = _units.render_service_unit(["/opt/my tools/nomyo-agent"], "/home/ada/.local/state/x")
    entries = _entries(text)
    service = {key: value for section, key, value in entries if section == "Service"}
    assert service["ExecStart"] == '"/opt/my tools/nomyo-agent" serve'
    assert service["ExecStartPre"] == "+/bin/mkdir -p -m 0700 /home/ada/.local/state/x"
    assert service["Type"] == "notify"
    assert service["ReadWritePaths"] == "/home/ada/.local/state/x"
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    assert ("Unit", "Requires", "nomyo-agent.socket") in entries
    assert ("Install", "Also", "nomyo-agent.socket") in entries
    # The whole shared sandbox, line for line, with the one writable folder filled in.
    assert SANDBOX.format(state_dir="/home/ada/.local/state/x") in text
    assert [e for e in entries if e[1] == "SystemCallFilter"] == [
        ("Service", "SystemCallFilter", "@system-service"),
        ("Service", "SystemCallFilter", "~@privileged"),
    ]


def test_specifiers_are_kept_only_when_asked() -> None:
    kept = _units.render_service_unit(["%h/.local/bin/nomyo-agent"], "%h/s", specifiers=True)
    assert "ExecStart=%h/.local/bin/nomyo-agent serve\n" in kept
    escaped = _units.render_service_unit(["/a%h/nomyo-agent"], "/s$x")
    assert "ExecStart=/a%%h/nomyo-agent serve\n" in escaped
    assert "ReadWritePaths=/s$$x\n" in escaped


def test_the_launch_agent_plist_parses_to_exactly_this() -> None:
    content = _units.render_plist(["/x/nomyo-agent"], "/Users/ada/s/agent.sock", "/Users/ada/l.log")
    assert content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert plistlib.loads(content) == {
        "Label": "ai.nomyo.agent",
        "ProgramArguments": ["/x/nomyo-agent", "serve"],
        "Sockets": {"agent": {"SockPathName": "/Users/ada/s/agent.sock", "SockPathMode": 0o600}},
        "EnvironmentVariables": {"NOMYO_AGENT_SOCK": "/Users/ada/s/agent.sock"},
        "ProcessType": "Background",
        "StandardErrorPath": "/Users/ada/l.log",
    }
    # Keys in the order written (a plist a person reads), not sorted.
    assert list(plistlib.loads(content)) == [
        "Label", "ProgramArguments", "Sockets", "EnvironmentVariables", "ProcessType",
        "StandardErrorPath",
    ]  # fmt: skip


def test_the_environment_plist_sets_the_socket_for_the_session() -> None:
    assert plistlib.loads(_units.render_env_plist("/s/agent.sock")) == {
        "Label": "ai.nomyo.agent.environment",
        "ProgramArguments": ["/bin/launchctl", "setenv", "NOMYO_AGENT_SOCK", "/s/agent.sock"],
        "RunAtLoad": True,
    }
