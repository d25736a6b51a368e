"""``nomyo-chat``: the installed command against a real agent and devserver; its output, its
one-line errors with hints, and each documented exit status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomyo_client._chat import EXIT_CODES
from nomyo_devserver import DevServer
from support.agent import RunningAgent

CHAT = str(Path(sys.executable).with_name("nomyo-chat"))


@pytest.fixture(scope="module")
def router() -> Iterator[DevServer]:
    with DevServer(key_bits=2048, api_key="sk-cli") as server:
        yield server


@pytest.fixture
def env(agent: RunningAgent, router: DevServer) -> dict[str, str]:
    agent.keygen(bits=2048)
    return {
        **agent.env, "NOMYO_AGENT_SOCK": agent.path, "NOMYO_BASE_URL": router.url,
        "NOMYO_API_KEY": "sk-cli", "NOMYO_MODEL": "devserver/echo", "NOMYO_AGENT_AUTOSTART": "0",
    }  # fmt: skip


def chat(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert shutil.which(CHAT), f"{CHAT} is not installed: run ./dev setup"
    return subprocess.run(
        [CHAT, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def assert_one_error(result: subprocess.CompletedProcess[str], code: int, hint: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("nomyo-chat: error: ")
    assert lines[1].startswith("hint: ")
    assert hint in lines[1]
    assert len(lines) == 2


def test_prompt_as_arguments(env: dict[str, str]) -> None:
    result = chat(env, "--allow-http", "hello", "there")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello there\n"
    assert result.stderr == ""


def test_prompt_on_stdin_with_system_tier_and_json(env: dict[str, str]) -> None:
    result = chat(env, "--allow-http", "--json", "--system", "be brief", "--security-tier",
                  "high", "-m", "devserver/echo", stdin="from stdin\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["choices"][0]["message"]["content"] == "echo: from stdin"
    assert answer["_metadata"]["security_tier"] == "high"
    assert answer["_metadata"]["is_encrypted"] is True


def test_options_override_the_environment(env: dict[str, str], router: DevServer) -> None:
    bare = {k: v for k, v in env.items() if k not in ("NOMYO_BASE_URL", "NOMYO_API_KEY")}
    result = chat(bare, "--base-url", router.url, "--api-key", "sk-cli", "--allow-http", "hi")
    assert result.stdout == "echo: hi\n"
    assert_one_error(chat(env, "--allow-http", "--api-key", "wrong", "hi"), 1, "api_key")


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    assert chat(env, "--allow-http", stdin="  \n").returncode == 2
    no_model = {k: v for k, v in env.items() if k != "NOMYO_MODEL"}
    result = chat(no_model, "--allow-http", "hi")
    assert result.returncode == 2
    assert "NOMYO_MODEL" in result.stderr
    assert chat(env, "--security-tier", "ultra", "hi").returncode == 2


def test_router_refusal_exits_1(env: dict[str, str]) -> None:
    result = chat(env, "--allow-http", "-m", "devserver/status-403", "hi")
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr


def test_plain_http_refused_exits_4(env: dict[str, str]) -> None:
    assert_one_error(chat(env, "hi"), 4, "--allow-http")


def test_bad_answer_exits_4(env: dict[str, str]) -> None:
    result = chat(env, "--allow-http", "-m", "devserver/bad-tag", "hi")
    assert result.returncode == 4
    assert "could not be decrypted or authenticated" in result.stderr


def test_agent_problems_exit_3(env: dict[str, str], agent: RunningAgent) -> None:
    agent.cli("lock")
    assert_one_error(chat(env, "--allow-http", "hi"), 3, "nomyo-agent unlock")
    gone = {**env, "NOMYO_AGENT_SOCK": env["NOMYO_AGENT_SOCK"] + ".nothing"}
    assert_one_error(chat(gone, "--allow-http", "hi"), 3, "nomyo-agent start")


def test_unreachable_router_exits_5(env: dict[str, str]) -> None:
    result = chat({**env, "NOMYO_BASE_URL": "http://127.0.0.1:9"}, "--allow-http", "hi")
    assert result.returncode == 5
    assert "could not reach the router" in result.stderr


def test_exit_codes_are_documented() -> None:
    result = subprocess.run([CHAT, "--help"], capture_output=True, text=True, check=True)
    text = " ".join(result.stdout.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {meaning}" in text
