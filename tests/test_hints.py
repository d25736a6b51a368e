"""Issue 13, items 5 to 8: every refusal a new user met is one line with its real cause and a
hint that fits, and the right exit status. Through the console scripts and the library, against
a real agent and a real devserver."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nomyo_agent._launch import start_error
from nomyo_client import (
    AgentError,
    APIConnectionError,
    APIError,
    InvalidRequestError,
    SecureChatCompletion,
    SecureCompletionClient,
)
from support.agent import RunningAgent
from support.console import console
from support.desktop import Session
from support.devserver import RunningDevServer

HI = [{"role": "user", "content": "hi"}]


def error_and_hint(stderr: str, prog: str = "nomyo-agent") -> tuple[str, str]:
    """The one error line and the one hint line, and nothing else on stderr."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith(f"{prog}: "), stderr
    assert lines[1].startswith("hint: "), stderr
    return lines[0], lines[1]


def agent_cli(agent: RunningAgent, *args: str, stdin: str = "") -> tuple[int, str, str]:
    out = console("nomyo-agent", "--socket", agent.path, *args, env=agent.env, stdin=stdin)
    return out.returncode, out.stdout, out.stderr


# --- 5: a start failure reports this start's error only -----------------------------------------


def test_a_failed_start_reports_its_own_error_not_the_logs_old_lines(desktop: Session) -> None:
    env = dict(desktop.env)
    log = Path(env["XDG_STATE_HOME"]) / "nomyo-agent" / "log" / "agent.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "nomyo-agent: an error of a start last week\nhint: an old hint\n"
        "nomyo-agent[12]: WARNING: process memory not locked (memlock limit 8 MiB)\n"
    )
    config = Path(env["XDG_CONFIG_HOME"]) / "nomyo-agent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[agent]\nidle_timout = 60\n")
    sock = str(desktop.runtime_dir / "nomyo-agent" / "agent.sock")
    out = console("nomyo-agent", "--socket", sock, "start", env=env)
    assert out.returncode == 1
    first, hint = error_and_hint(out.stderr)
    assert first == (
        f"nomyo-agent: the agent failed to start: unknown setting(s) in {config}: idle_timout"
    )
    assert "known settings: auto_unlock, confirm, connection_timeout, idle_timeout" in hint
    assert f"the full log is {log}" in hint
    assert "last week" not in out.stderr
    assert "memlock" not in out.stderr


def test_start_error_picks_the_cause_out_of_the_childs_lines() -> None:
    warning = "nomyo-agent[7]: WARNING: process memory is not locked\n"
    assert start_error(warning + "nomyo-agent[7]: ERROR: cannot bind\n") == ("cannot bind", "")
    crash = 'Traceback (most recent call last):\n  File "x", line 1\nOSError: [Errno 28] full\n'
    assert start_error(warning + crash) == ("OSError: [Errno 28] full", "")
    assert start_error(warning) == ("", "")


# --- 6: missing hints ------------------------------------------------------------------------


def _key_files(folder: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, what the error line says, what the hint says)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    none = serialization.NoEncryption()
    files = {
        "text": (b"just some notes\n", "not a PEM private key", "-----BEGIN PRIVATE KEY-----"),
        "public": (
            rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "this is a public key",
            "private_key.pem",
        ),
        "openssh": (
            rsa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, none
            ),
            "this is an OpenSSH private key",
            "ssh-keygen -p -m PKCS8 -f key.pem",
        ),
        "ec-sec1": (
            ec_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none
            ),
            "not an RSA key (ECPrivateKey)",
            "nomyo-agent keygen",
        ),
        "ec-pkcs8": (
            ec_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none
            ),
            "not an RSA key",
            "nomyo-agent keygen",
        ),
    }
    out = {}
    for name, (data, says, hint) in files.items():
        path = folder / f"{name}.pem"
        path.write_bytes(data)
        out[name] = (path, says, hint)
    return out


def test_importing_what_is_not_an_rsa_private_key_says_what_it_is(
    agent: RunningAgent, tmp_path: Path
) -> None:
    for name, (path, says, hint_text) in _key_files(tmp_path).items():
        code, _, stderr = agent_cli(agent, "import", str(path), "--no-passphrase")
        assert code == 1, (name, stderr)
        first, hint = error_and_hint(stderr)
        assert says in first, (name, first)
        assert hint_text in hint, (name, hint)


def test_pins_accept_with_a_malformed_origin_says_what_an_origin_is(agent: RunningAgent) -> None:
    code, _, stderr = agent_cli(agent, "pins", "accept", "api.nomyo.ai")
    assert code == 1
    first, hint = error_and_hint(stderr)
    assert "not a usable router URL 'api.nomyo.ai'" in first
    assert "e.g. https://api.nomyo.ai" in hint


def test_keygen_with_too_few_bits_is_a_usage_error(agent: RunningAgent) -> None:
    code, _, stderr = agent_cli(agent, "keygen", "--bits", "1024", "--no-passphrase")
    assert code == 2
    assert "1024 bits is too small: routers refuse keys under 2048 bits" in stderr
    assert agent.status().fingerprint is None  # nothing reached the agent


def test_a_request_over_10_mib_has_a_hint() -> None:
    async def go() -> None:
        async with SecureChatCompletion("http://127.0.0.1:9", allow_http=True) as client:
            huge = [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]
            await client.create(model="m", messages=huge)

    with pytest.raises(InvalidRequestError, match="over the 10485760-byte limit") as info:
        asyncio.run(go())
    assert "send less per request" in (info.value.hint or "")


def test_a_url_without_a_scheme_is_a_usage_error_with_a_hint(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    bare = devserver.url.removeprefix("http://")
    env = {**agent.env, "NOMYO_AGENT_SOCK": agent.path, "NOMYO_AGENT_AUTOSTART": "0"}
    out = console("nomyo-chat", "--base-url", bare, "-m", "devserver/echo", "hi", env=env)
    assert out.returncode == 2
    first, hint = error_and_hint(out.stderr, "nomyo-chat")
    assert f"not an http(s) router URL: '{bare}'" in first
    assert f"e.g. https://{bare}" in hint
    assert "--allow-http" in hint
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(SecureChatCompletion(bare).create(model="m", messages=HI))
    assert "starts with https://" in (info.value.hint or "")


# --- 7: misleading hints ---------------------------------------------------------------------


def _create(agent: RunningAgent, base_url: str, **options: object) -> dict[str, object]:
    async def go() -> dict[str, object]:
        async with SecureChatCompletion(
            base_url, agent_socket=agent.path, autostart=False, **options
        ) as client:
            return await client.create(model="devserver/echo", messages=HI)

    return asyncio.run(go())


def test_a_base_url_ending_in_v1_gets_the_roots_hint(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    agent.keygen()
    with pytest.raises(APIError) as info:
        _create(agent, devserver.url + "/v1", allow_http=True)
    assert info.value.status_code == 404
    assert info.value.hint == (
        f"the base URL is the router's root, without /v1: use {devserver.url} "
        "(the client adds /v1/chat/secure_completion itself)"
    )


def test_https_to_a_plain_http_server_says_it_does_not_speak_tls(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    agent.keygen()
    https = devserver.url.replace("http://", "https://")
    with pytest.raises(APIConnectionError) as info:
        _create(agent, https, max_retries=2)
    assert "attempts" not in info.value.message  # a handshake that failed is not tried again
    assert "does not speak TLS" in (info.value.hint or ""), info.value.hint
    assert f"use {devserver.url} with allow_http=True" in (info.value.hint or "")


def test_a_dead_proxy_from_the_environment_is_named(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    agent.keygen()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {
        **{k: v for k, v in agent.env.items() if "proxy" not in k.lower()},
        "NOMYO_AGENT_SOCK": agent.path, "NOMYO_AGENT_AUTOSTART": "0", "HTTP_PROXY": dead,
    }  # fmt: skip
    out = console(
        "nomyo-chat", "--base-url", devserver.url, "--allow-http", "-m", "devserver/echo", "hi",
        env=env,
    )  # fmt: skip
    assert out.returncode == 5
    _, hint = error_and_hint(out.stderr, "nomyo-chat")
    assert f"goes through the proxy {dead} from the environment" in hint
    assert "NO_PROXY=127.0.0.1" in hint


def test_a_socket_straight_in_a_shared_folder_is_refused_untouched(
    tmp_path: Path, desktop: Session
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # what /tmp is
    sock = shared / "agent.sock"
    for command in ("start", "serve", "status"):
        out = console("nomyo-agent", "--socket", str(sock), command, env=desktop.env, timeout=20)
        assert out.returncode == 2, (command, out.stderr)
        first, hint = error_and_hint(out.stderr)
        assert "the socket needs a folder of its own (0700)" in first
        assert f"--socket {shared}/nomyo-agent-{os.getuid()}/agent.sock" in hint
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # not chmod-ed by the agent
    assert list(shared.iterdir()) == []  # no .start, .lock or socket file left behind


def test_a_socket_path_over_the_unix_limit_says_so(tmp_path: Path, desktop: Session) -> None:
    sock = tmp_path / ("d" * 120) / "agent.sock"
    out = console("nomyo-agent", "--socket", str(sock), "status", env=desktop.env)
    assert out.returncode == 2
    first, hint = error_and_hint(out.stderr)
    assert "over the 107-byte limit of Unix sockets" in first
    assert "lost" not in out.stderr
    assert "shorter" in hint


def test_the_library_refuses_an_unusable_socket_path_up_front(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    long = tmp_path / ("d" * 120) / "agent.sock"
    for make in (SecureChatCompletion, SecureCompletionClient):
        with pytest.raises(AgentError, match="over the 107-byte limit") as info:
            make(agent_socket=long)
        assert "agent_socket=" in (info.value.hint or "")
        with pytest.raises(AgentError, match="needs a folder of its own") as info:
            make(agent_socket=shared / "agent.sock")
        assert f"use agent_socket={shared}/nomyo-agent-" in (info.value.hint or "")
    assert list(shared.iterdir()) == []


def test_unlock_with_empty_stdin_is_not_a_failed_attempt(agent: RunningAgent) -> None:
    agent.keygen(passphrase=b"correct horse")
    agent_cli(agent, "lock")
    code, _, stderr = agent_cli(agent, "unlock", "--passphrase-stdin", stdin="")
    assert code == 2
    first, hint = error_and_hint(stderr)
    assert "read no passphrase" in first
    assert "printf" in hint
    assert agent.status().counters.failed_unlocks == 0
    code, _, stderr = agent_cli(agent, "unlock", "--passphrase-stdin", stdin="correct horse\n")
    assert code == 0, stderr  # no growing delay was started


def test_stop_with_no_agent_does_not_say_start_it(tmp_path: Path, desktop: Session) -> None:
    sock = desktop.runtime_dir / "nobody" / "agent.sock"
    out = console("nomyo-agent", "--socket", str(sock), "stop", env=desktop.env)
    assert out.returncode == 3
    _, hint = error_and_hint(out.stderr)
    assert "nothing to stop" in hint
    assert "start" not in hint
