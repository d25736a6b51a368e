"""Issue 13, items 9 to 12: what code ported from the public client and the OpenAI SDK does, and
what `status` and `stop` show after several apps used the agent. Real agent, real devserver."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_client import (
    APIConnectionError,
    APIError,
    InvalidRequestError,
    SecureChatCompletion,
    SecureCompletionClient,
    ServerError,
)
from nomyo_devserver._echo import request_digest
from support.agent import RunningAgent
from support.console import console
from support.devserver import RunningDevServer, write_private_key

HI = [{"role": "user", "content": "hi"}]


def public_client_key_dir(folder: Path) -> Path:
    """A ``client_keys`` folder as the public client writes it, for a key the agent lacks."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder.mkdir()
    write_private_key(folder / "private_key.pem", key)
    (folder / "public_key.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return folder


# --- 9: a key other than the agent's ----------------------------------------------------------


def test_load_keys_of_another_key_has_a_python_hint(agent: RunningAgent, tmp_path: Path) -> None:
    agent.keygen()
    keys = public_client_key_dir(tmp_path / "client_keys")
    client = SecureCompletionClient(agent_socket=agent.path, autostart=False)
    with pytest.raises(APIError) as info:
        client.load_keys(str(keys / "private_key.pem"))
    assert "already holds another identity" in info.value.message
    assert "SecureCompletionClient(agent_socket=...)" in (info.value.hint or "")
    assert (info.value.hint or "").startswith("keep using the agent's identity")


def test_a_key_dir_that_differs_from_the_agents_identity_warns_once_per_process(
    agent: RunningAgent, devserver: RunningDevServer, tmp_path: Path
) -> None:
    agent.keygen()
    keys = public_client_key_dir(tmp_path / "client_keys")

    async def two_clients_two_requests_each() -> None:
        for _ in range(2):
            async with SecureChatCompletion(
                devserver.url, allow_http=True, key_dir=keys, agent_socket=agent.path,
                autostart=False,
            ) as client:  # fmt: skip
                for _ in range(2):
                    await client.create(model="devserver/echo", messages=HI)

    with pytest.warns(UserWarning, match="holds another key") as record:
        asyncio.run(two_clients_two_requests_each())
    assert len(record) == 1
    text = str(record[0].message)
    assert "holds another key than the agent's identity" in text
    assert f"nomyo-agent import {keys / 'private_key.pem'} --force" in text


def test_a_key_dir_with_the_agents_own_key_is_silent(
    agent: RunningAgent, devserver: RunningDevServer, tmp_path: Path
) -> None:
    identity = agent.keygen()
    keys = tmp_path / "client_keys"
    keys.mkdir()
    (keys / "public_key.pem").write_text(identity.public_key_pem)

    async def go() -> None:
        async with SecureChatCompletion(
            devserver.url, allow_http=True, key_dir=keys, agent_socket=agent.path,
            autostart=False,
        ) as client:  # fmt: skip
            await client.create(model="devserver/echo", messages=HI)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(go())


# --- 10: the public client's attribute -------------------------------------------------------


def test_the_client_attribute_of_ported_code(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    chat = SecureChatCompletion(devserver.url, allow_http=True, agent_socket=agent.path)
    assert isinstance(chat.client, SecureCompletionClient)
    assert chat.client is chat.client
    assert chat.client.router_url == devserver.url
    assert chat.client.allow_http
    pem = asyncio.run(chat.client.fetch_server_public_key())
    assert pem == devserver.public_key_pem


# --- 11: the environment and the OpenAI request options --------------------------------------


def test_the_library_reads_nomyo_base_url_and_nomyo_api_key(
    agent: RunningAgent, make_devserver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.keygen()
    router = make_devserver(api_key="sk-env")
    monkeypatch.setenv("NOMYO_BASE_URL", router.url)
    monkeypatch.setenv("NOMYO_API_KEY", "sk-env")

    async def go(**options: Any) -> dict[str, Any]:
        async with SecureChatCompletion(
            allow_http=True, agent_socket=agent.path, autostart=False, **options
        ) as client:
            return await client.create(model="devserver/echo", messages=HI)

    assert asyncio.run(go())["choices"][0]["message"]["content"] == "echo: hi"
    assert SecureCompletionClient().router_url == router.url
    with pytest.raises(APIError) as info:  # an argument wins over the environment
        asyncio.run(go(api_key="sk-wrong"))
    assert info.value.status_code == 401


def test_openai_request_options_never_reach_the_model(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    agent.keygen()

    async def go(**options: Any) -> dict[str, Any]:
        async with SecureChatCompletion(
            devserver.url, allow_http=True, agent_socket=agent.path, autostart=False
        ) as client:
            return await client.create(model="devserver/echo", messages=HI, **options)

    answer = asyncio.run(
        go(temperature=0.5, timeout=30, extra_headers={"X-Trace": "1"}, extra_body={"seed": 7})
    )
    # The echo model's id is the digest of the request it read: exactly these keys.
    seen = {"model": "devserver/echo", "messages": HI, "temperature": 0.5, "seed": 7}
    assert answer["id"] == f"chatcmpl-devserver-{request_digest(seen)[:24]}"
    with pytest.raises(APIConnectionError, match=r"within timeout=0.5 s"):
        asyncio.run(_slow(agent, devserver))
    for bad in ({"extra_headers": {"X-Payload-ID": "x"}}, {"extra_body": {"api_key": "x"}}):
        with pytest.raises(InvalidRequestError):
            asyncio.run(go(**bad))


async def _slow(agent: RunningAgent, devserver: RunningDevServer) -> None:
    async with SecureChatCompletion(
        devserver.url, allow_http=True, agent_socket=agent.path, autostart=False
    ) as client:
        await client.create(model="devserver/slow-5000", messages=HI, timeout=0.5)


class _Recorder(BaseHTTPRequestHandler):
    """A router stand-in that serves a key and records the headers of each POST (then 500s)."""

    protocol_version = "HTTP/1.1"
    key_pem: ClassVar[bytes] = b""
    posted: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self._answer(200, self.key_pem)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.posted.append({k.lower(): v for k, v in self.headers.items()})
        self._answer(500, json.dumps({"detail": "recorded"}).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder(devserver: RunningDevServer) -> Iterator[str]:
    _Recorder.key_pem = devserver.public_key_pem.encode()
    _Recorder.posted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_extra_headers_go_on_the_http_request(agent: RunningAgent, recorder: str) -> None:
    agent.keygen()

    async def go() -> None:
        async with SecureChatCompletion(
            recorder, allow_http=True, agent_socket=agent.path, autostart=False, max_retries=0
        ) as client:
            await client.create(model="m", messages=HI, extra_headers={"X-Trace": "abc"})

    with pytest.raises(ServerError):
        asyncio.run(go())
    assert [h.get("x-trace") for h in _Recorder.posted] == ["abc"]


# --- 12: status and stop after several apps ---------------------------------------------------


def test_status_counts_each_app_once_and_shows_the_pin_policy(
    agent: RunningAgent, devserver: RunningDevServer
) -> None:
    agent.keygen()
    env = {**agent.env, "NOMYO_AGENT_SOCK": agent.path, "NOMYO_AGENT_AUTOSTART": "0"}
    for _ in range(3):
        out = console(
            "nomyo-chat", "--base-url", devserver.url, "--allow-http", "-m", "devserver/echo",
            "hi", env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    status = console("nomyo-agent", "status", env=env)
    assert "recent apps: nomyo-chat (3)\n" in status.stdout, status.stdout
    assert "router pins:  tofu\n" in status.stdout


def test_stop_of_an_unlocked_agent_writes_one_stopping_audit_line(agent: RunningAgent) -> None:
    agent.keygen()
    env = {**agent.env, "NOMYO_AGENT_SOCK": agent.path}
    assert console("nomyo-agent", "stop", env=env).returncode == 0
    agent.proc.wait(10)
    audit = Path(agent.env["XDG_STATE_HOME"]) / "nomyo-agent" / "audit.log"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    stops = [line for line in lines if line["event"] == "stopping"]
    assert [line["state"] for line in stops] == ["locked"], lines
